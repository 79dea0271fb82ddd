//! `autopilot catalog` (services, instances, watch) and `autopilot leader`: reading the service catalog.

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// List services with their instance counts.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// List the live instances of a service.
    Instances {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a service's passing instances now and after every change, until interrupted.
    Watch {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn catalog_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    cmd: &CatalogCmd,
) -> anyhow::Result<i32> {
    let cat = autopilot_runtime::catalog::open(&url, &super::cli_owner(), &etcd).await?;
    match cmd {
        CatalogCmd::Services { json } => {
            let list = cat.services().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<32} {:>9} {:>8}", "SERVICE", "INSTANCES", "PASSING");
                for s in list {
                    println!("{:<32} {:>9} {:>8}", s.name, s.instances, s.passing);
                }
            }
        }
        CatalogCmd::Instances { name, json } => {
            let list = cat.instances(name).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_instances(&list);
            }
        }
        CatalogCmd::Watch { name, json } => {
            let mut changes = cat.changes();
            let mut last = None;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                changes.borrow_and_update();
                let passing: Vec<_> = cat
                    .instances(name)
                    .await?
                    .into_iter()
                    .filter(|i| i.status == autopilot_catalog::Status::Passing)
                    .collect();
                let key: Vec<_> = passing
                    .iter()
                    .map(|i| (&i.address, i.port, &i.tags))
                    .map(|k| format!("{k:?}"))
                    .collect();
                if last.as_ref() != Some(&key) {
                    if *json {
                        println!("{}", serde_json::to_string(&passing)?);
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
                    r = changes.changed() => if r.is_err() { return Ok(1) },
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
pub async fn leader_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    name: &str,
    json: bool,
) -> anyhow::Result<i32> {
    let cat = autopilot_runtime::catalog::open(&url, &super::cli_owner(), &etcd).await?;
    match cat.leader(name).await? {
        Some(l) if json => println!("{}", serde_json::to_string(&l)?),
        Some(l) => println!("{} {}:{} term {}", l.id, l.address, l.port, l.term),
        None => {
            eprintln!("autopilot: nobody leads {name:?}");
            return Ok(1);
        }
    }
    Ok(0)
}
