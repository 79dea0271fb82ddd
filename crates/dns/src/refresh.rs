//! Keeping the zone current: read the catalog at start and after each change (coalesced), every call under a deadline; the last good zone stays while the catalog fails.

use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::{Catalog, CatalogError, Outage};
use autopilot_fleet::clusters::MEMBERS_PREFIX;
use hickory_server::proto::rr::Name;
use tokio::time::{Instant, timeout};

use crate::handler::Shared;
use crate::zone::{View, Zone};

/// Every catalog call's deadline.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// At most one rebuild this often: changes in between are coalesced.
pub const COALESCE: Duration = Duration::from_millis(50);
/// While the catalog fails, retry this often even without a change.
pub const RESYNC: Duration = Duration::from_secs(5);
/// At most this many services (and as many elections) are read per rebuild.
pub const MAX_SERVICES: usize = 5_000;

async fn call<T>(
    cat: &dyn Catalog,
    what: &str,
    f: impl std::future::Future<Output = Result<T, CatalogError>>,
) -> Result<T, String> {
    match timeout(CALL_DEADLINE, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: catalog {} did not answer within {}s",
            cat.url(),
            CALL_DEADLINE.as_secs()
        )),
    }
}

/// Reads what the zone is built from: user services (names not starting
/// with `_`) with their instances, and the leaders of the elections that
/// have member records.
pub async fn read_view(cat: &dyn Catalog) -> Result<View, String> {
    let mut view = View::default();
    let mut services = call(cat, "listing services", cat.services()).await?;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut elections = Vec::new();
    for s in services {
        if let Some(e) = s.name.strip_prefix(MEMBERS_PREFIX) {
            if !e.is_empty() && elections.len() < MAX_SERVICES {
                elections.push(e.to_string());
            }
            continue;
        }
        if s.name.starts_with('_')
            || crate::zone::label(&s.name).is_none()
            || view.services.len() >= MAX_SERVICES
        {
            continue;
        }
        let what = format!("reading the instances of {:?}", s.name);
        let list = call(cat, &what, cat.instances(&s.name)).await?;
        view.services.push((s.name, list));
    }
    for e in elections {
        if crate::zone::label(&e).is_none() {
            continue;
        }
        let what = format!("reading the leader of {e:?}");
        if let Some(l) = call(cat, &what, cat.leader(&e)).await? {
            view.leaders.push((e, l));
        }
    }
    Ok(view)
}

/// The refresher: runs until aborted.
pub async fn run(cat: Arc<dyn Catalog>, shared: Arc<Shared>, domain: Name, ttl: Duration) {
    let mut changes = cat.changes();
    let mut outage = Outage::default();
    let mut serial: u32 = 0;
    let mut stream_open = true;
    loop {
        changes.borrow_and_update();
        let started = Instant::now();
        match read_view(cat.as_ref()).await {
            Ok(view) => {
                serial = serial.wrapping_add(1);
                let zone = Zone::build(&domain, ttl, serial, &view);
                if zone.dropped > 0 {
                    tracing::warn!(
                        "dns: the zone is full ({} names): {} names left out",
                        zone.len(),
                        zone.dropped
                    );
                }
                tracing::debug!("dns: zone {serial} has {} names", zone.len());
                shared.store(zone);
                outage.recovered(cat.url(), "dns: reading the catalog");
            }
            Err(why) => outage.failed(cat.url(), "dns: reading the catalog", &why),
        }
        if stream_open {
            if outage.is_failing() {
                tokio::select! {
                    r = changes.changed() => stream_open = r.is_ok(),
                    () = tokio::time::sleep(RESYNC) => {}
                }
            } else {
                stream_open = changes.changed().await.is_ok();
            }
        }
        if !stream_open {
            // Nobody reports changes any more: fall back to polling.
            tokio::time::sleep(RESYNC).await;
        }
        tokio::time::sleep_until(started + COALESCE).await;
    }
}
