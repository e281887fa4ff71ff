//! A resolver that looks a host up once per client instead of once per
//! request.
//!
//! ureq 3 (3.5.2, `run.rs::connect`) asks its resolver before every request,
//! even one that then reuses a pooled connection, and its `DefaultResolver`
//! runs every lookup that has a timeout on a fresh thread (the design chosen
//! upstream in <https://github.com/algesten/ureq/issues/79>, "Timeouts for
//! DNS lookups": `getaddrinfo` cannot be timed out, so a thread waits for
//! it). A reap of 1000 jobs spawned 2000 threads. This resolver answers an
//! IP literal at once and looks a host name up (through the default
//! resolver, with its timeout) once per client, that is once per run. It
//! can go when ureq consults its pool before resolving.

use std::sync::Mutex;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};

#[derive(Debug, Default)]
pub(super) struct OnceResolver {
    looked_up: Mutex<Vec<(String, ResolvedSocketAddrs)>>,
}

impl Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host_port = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => DefaultResolver::host_and_port(scheme, authority),
            _ => None,
        };
        let Some(host_port) = host_port else {
            return DefaultResolver::default().resolve(uri, config, timeout);
        };
        if let Ok(addr) = host_port.parse::<std::net::SocketAddr>() {
            let mut addrs = self.empty();
            addrs.push(addr);
            return Ok(addrs);
        }
        let known = |looked_up: &[(String, ResolvedSocketAddrs)]| {
            looked_up
                .iter()
                .find(|(hp, _)| *hp == host_port)
                .map(|(_, addrs)| addrs.clone())
        };
        if let Some(addrs) = known(&self.looked_up.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(addrs);
        }
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut looked_up = self.looked_up.lock().unwrap_or_else(|p| p.into_inner());
        if known(&looked_up).is_none() {
            looked_up.push((host_port, addrs.clone()));
        }
        Ok(addrs)
    }
}
