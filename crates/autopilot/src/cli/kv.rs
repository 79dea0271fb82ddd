//! `autopilot kv`: reading and writing the catalog's keys, for hooks.

use clap::Subcommand;

use super::{Access, CatalogOpts, Output, bounded, exit, open_catalog};

#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Print a key's value (exit 1 if it is absent).
    Get { key: String },
    /// Set a key.
    Put {
        key: String,
        /// Taken as written, even if it starts with a dash.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// `cas KEY EXPECTED NEW`, or `cas --absent KEY NEW`: set a key only if it
    /// holds EXPECTED (or does not exist); exit 1 if it did not.
    Cas {
        key: String,
        #[arg(
            num_args = 1..=2,
            required = true,
            value_name = "[EXPECTED] NEW",
            allow_hyphen_values = true
        )]
        values: Vec<String>,
        #[arg(long)]
        absent: bool,
    },
    /// Delete a key (exit 1 if it was absent).
    Del { key: String },
    /// List keys (and values) under a prefix.
    #[command(alias = "list")]
    Ls {
        #[arg(default_value = "")]
        prefix: String,
    },
}

impl KvCmd {
    /// Whether the command only reads (and so must not create a catalog).
    fn reads_only(&self) -> bool {
        matches!(self, KvCmd::Get { .. } | KvCmd::Ls { .. })
    }
}

pub async fn kv_cmd(o: CatalogOpts, cmd: &KvCmd, out: Output) -> anyhow::Result<i32> {
    let access = if cmd.reads_only() {
        Access::Read
    } else {
        Access::Write
    };
    let cat = open_catalog(&o, &super::cli_owner(), access).await?.cat;
    let url = o.url.clone();
    bounded(&format!("catalog {url}"), o.deadline, async {
        Ok(match cmd {
            KvCmd::Get { key } => match cat.kv_get(key).await? {
                Some(v) if out.json() => {
                    println!("{}", serde_json::json!({ "key": key, "value": v }));
                    exit::OK
                }
                Some(v) => {
                    println!("{v}");
                    exit::OK
                }
                None => {
                    eprintln!("autopilot: no key {} in catalog {url}", super::quote(key));
                    exit::ABSENT
                }
            },
            KvCmd::Put { key, value } => {
                cat.kv_put(key, value).await?;
                exit::OK
            }
            KvCmd::Cas {
                key,
                values,
                absent,
            } => {
                let (expected, value) = match (values.as_slice(), absent) {
                    ([new], true) => (None, new),
                    ([old, new], false) => (Some(old.as_str()), new),
                    _ => {
                        return Err(super::SetupError {
                            origin: "kv cas".into(),
                            field: String::new(),
                            message: "usage: autopilot kv cas KEY EXPECTED NEW, or autopilot kv cas --absent KEY NEW".into(),
                        }
                        .into());
                    }
                };
                if cat.kv_cas(key, expected, value).await? {
                    exit::OK
                } else {
                    exit::ABSENT
                }
            }
            KvCmd::Del { key } => {
                if cat.kv_delete(key).await? {
                    exit::OK
                } else {
                    exit::ABSENT
                }
            }
            KvCmd::Ls { prefix } => {
                let list = cat.kv_list(prefix).await?;
                if out.json() {
                    let m: serde_json::Map<String, serde_json::Value> = list
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect();
                    println!("{}", serde_json::Value::Object(m));
                } else {
                    for (k, v) in list {
                        println!("{k}\t{v}");
                    }
                }
                exit::OK
            }
        })
    })
    .await
}
