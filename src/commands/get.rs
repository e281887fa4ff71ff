//! `get`: a job's status, from the service.

use crate::cli::GetArgs;
use crate::config::Settings;
use crate::error::Code;
use crate::target;
use crate::text::clip;

pub fn run(args: &GetArgs, settings: &Settings) -> anyhow::Result<Code> {
    let job = target::job_id(&args.job)?;
    let client = settings.client()?;
    let st = client
        .status(&job)
        .map_err(|e| anyhow::Error::new(e).context(format!("job {job}")))?;
    if args.json {
        println!("{}", crate::text::json_line(&st.raw)?);
    } else {
        println!("{}", clip(st.status.as_str(), 64));
        if let Some(err) = &st.error {
            println!("error: {}", clip(err, 2000));
        }
    }
    Ok(Code::Ok)
}
