//! `autopilot kv`: reading and writing the catalog's keys, for hooks.

use anyhow::bail;
use clap::Subcommand;

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
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn kv_cmd(
    url: String,
    etcd: autopilot_config::EtcdConfig,
    cmd: &KvCmd,
) -> anyhow::Result<i32> {
    let cat = autopilot_runtime::catalog::open(&url, &super::cli_owner(), &etcd).await?;
    Ok(match cmd {
        KvCmd::Get { key } => match cat.kv_get(key).await? {
            Some(v) => {
                println!("{v}");
                0
            }
            None => {
                eprintln!("autopilot: no key {key:?} in catalog {url}");
                1
            }
        },
        KvCmd::Put { key, value } => {
            cat.kv_put(key, value).await?;
            0
        }
        KvCmd::Cas {
            key,
            values,
            absent,
        } => {
            let (expected, value) = match (values.as_slice(), absent) {
                ([new], true) => (None, new),
                ([old, new], false) => (Some(old.as_str()), new),
                _ => bail!(
                    "usage: autopilot kv cas KEY EXPECTED NEW, or autopilot kv cas --absent KEY NEW"
                ),
            };
            i32::from(!cat.kv_cas(key, expected, value).await?)
        }
        KvCmd::Del { key } => i32::from(!cat.kv_delete(key).await?),
        KvCmd::Ls { prefix, json } => {
            let list = cat.kv_list(prefix).await?;
            if *json {
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
            0
        }
    })
}
