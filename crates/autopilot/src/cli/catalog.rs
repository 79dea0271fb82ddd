//! `autopilot catalog` (services, instances, watch) and `autopilot leader`: reading the service catalog.

use clap::Subcommand;

use autopilot_fleet as fleet;

use super::{Access, CatalogOpts, Deadline, Output, bounded, exit, fleet_err, open_catalog};

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// List services with their instance counts.
    Services,
    /// List the live instances of a service, with each one's last heartbeat.
    Instances { name: String },
    /// Print a service's passing instances now and after every change, until interrupted.
    Watch { name: String },
}

pub async fn catalog_cmd(o: CatalogOpts, cmd: &CatalogCmd, out: Output) -> anyhow::Result<i32> {
    let what = format!("catalog {}", o.url);
    // `watch` may start before any agent: it creates the embedded catalog
    // so it can wait on it. The others read only what exists.
    let access = match cmd {
        CatalogCmd::Watch { .. } => Access::Await,
        _ => Access::Read,
    };
    let opened = open_catalog(&o, &super::cli_owner(), access).await?;
    let cat = opened.cat;
    match cmd {
        CatalogCmd::Services => {
            let list = bounded(&what, o.deadline, async {
                fleet::services::counts(cat.as_ref())
                    .await
                    .map_err(|e| fleet_err("catalog services", e))
            })
            .await?;
            if out.json() {
                let v = fleet::services::counts_json(&list);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<32} {:>9} {:>8}", "SERVICE", "INSTANCES", "PASSING");
                for s in list {
                    println!("{:<32} {:>9} {:>8}", s.name, s.instances, s.passing);
                }
            }
        }
        CatalogCmd::Instances { name } => {
            let list = bounded(&what, o.deadline, async {
                fleet::services::instances(cat.as_ref(), name)
                    .await
                    .map_err(|e| fleet_err("catalog instances", e))
            })
            .await?;
            if out.json() {
                let v = fleet::services::instances_json(&list);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_instances(&list);
            }
        }
        CatalogCmd::Watch { name } => {
            let mut changes = cat.changes();
            let mut last = None;
            // The first read shares the command's deadline; each later one
            // (after a change) gets a whole --timeout.
            let mut deadline = o.deadline;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                changes.borrow_and_update();
                let passing: Vec<_> =
                    bounded(&what, deadline, async { Ok(cat.instances(name).await?) })
                        .await?
                        .into_iter()
                        .filter(|i| i.status == autopilot_catalog::Status::Passing)
                        .collect();
                // What a change is compared by; never printed.
                let key: Vec<_> = passing
                    .iter()
                    .map(|i| (&i.id, &i.address, i.port, &i.tags))
                    .map(|k| format!("{k:?}"))
                    .collect();
                if last.as_ref() != Some(&key) {
                    if out.json() {
                        println!("{}", fleet::services::instances_json(&passing));
                    } else {
                        println!(
                            "{} {name}: {} passing: {}",
                            autopilot_catalog::rfc3339_ms(autopilot_catalog::now_ms()),
                            passing.len(),
                            passing
                                .iter()
                                .map(|i| format!("{}:{}", i.address, i.port))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                    last = Some(key);
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() {
                            return Ok(exit::UNREACHABLE);
                        }
                        deadline = Deadline::after(o.timeout);
                    }
                    _ = tokio::signal::ctrl_c() => return Ok(0),
                    _ = term.recv() => return Ok(0),
                }
            }
        }
    }
    Ok(0)
}

fn print_instances(list: &[autopilot_catalog::Instance]) {
    println!(
        "{:<36} {:<22} {:<11} {:<24} TAGS",
        "ID", "ADDRESS", "STATUS", "LAST HEARTBEAT"
    );
    for i in list {
        println!(
            "{:<36} {:<22} {:<11} {:<24} {}",
            i.id,
            format!("{}:{}", i.address, i.port),
            i.status.as_str(),
            i.last_heartbeat,
            i.tags.join(",")
        );
    }
}

/// `autopilot leader NAME`: the current leader, or exit 1 if nobody leads.
pub async fn leader_cmd(o: CatalogOpts, name: &str, out: Output) -> anyhow::Result<i32> {
    let what = format!("catalog {}", o.url);
    let cat = open_catalog(&o, &super::cli_owner(), Access::Read)
        .await?
        .cat;
    let leader = bounded(&what, o.deadline, async {
        fleet::clusters::leader(cat.as_ref(), name)
            .await
            .map_err(|e| fleet_err("leader", e))
    })
    .await?;
    match leader {
        Some(l) if out.json() => println!("{}", fleet::clusters::leader_json(&Some(l))),
        Some(l) => println!("{} {}:{} term {}", l.id, l.address, l.port, l.term),
        None => {
            eprintln!("autopilot: nobody leads {}", super::quote(name));
            return Ok(exit::ABSENT);
        }
    }
    Ok(exit::OK)
}
