//! `cancel`: ask the service to cancel a job; the next `reap` moves its task
//! to failed/ with reason `cancelled`.

use crate::cli::CancelArgs;
use crate::client::ClientError;
use crate::config::Settings;
use crate::error::Code;
use crate::target;
use crate::ui::Ui;

pub fn run(args: &CancelArgs, settings: &Settings) -> anyhow::Result<Code> {
    let job = target::job_id(&args.job)?;
    let client = settings.client()?;
    let st = match client.cancel(&job) {
        Ok(st) => st,
        Err(ClientError::Conflict { .. }) => {
            let st = client
                .status(&job)
                .map_err(|e| anyhow::Error::new(e).context(format!("job {job}")))?;
            Ui::default().say(format_args!(
                "job {job} already ended ({}); nothing to cancel",
                st.status.as_str()
            ));
            st
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot cancel job {job}"))),
    };
    if args.json {
        println!("{}", crate::text::json_line(&st.raw)?);
    } else {
        println!("{}", crate::text::clip(st.status.as_str(), 64));
    }
    Ok(Code::Ok)
}
