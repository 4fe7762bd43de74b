//! Command-line client: talks to any node (trying each endpoint in turn), prints readable
//! output or `--json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct Conn {
    /// Node URLs, comma-separated; tried in order.
    #[arg(
        long,
        env = "FLAGSTAFF_ENDPOINT",
        default_value = "http://127.0.0.1:7701"
    )]
    endpoint: String,
    /// Admin token; defaults to DATA_DIR/admin.token.
    #[arg(long, env = "FLAGSTAFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where `cluster up` keeps its data (for the admin token).
    #[arg(long, env = "FLAGSTAFF_DATA_DIR", default_value = "flagstaff-data")]
    data_dir: PathBuf,
    /// CA certificates (PEM) trusted for `https` endpoints besides the built-in roots;
    /// defaults to DATA_DIR/tls/ca.pem when that exists (`cluster up --tls` writes it).
    #[arg(long, env = "FLAGSTAFF_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

/// An HTTP client trusting `ca_file`'s certificates besides the built-in roots.
pub fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = ca_file {
        for ca in flagstaff_node::tls::ca_certificates(path)? {
            builder = builder.add_root_certificate(ca);
        }
    }
    Ok(builder.build()?)
}

impl Conn {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join("admin.token");
        let t = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no --token/FLAGSTAFF_TOKEN and cannot read {}",
                path.display()
            )
        })?;
        Ok(t.trim().to_string())
    }

    fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file.clone().or_else(|| {
            let local = self.data_dir.join("tls").join("ca.pem");
            local.exists().then_some(local)
        })
    }

    /// Sends a request to the first endpoint that accepts a connection; `timeout` bounds the
    /// whole answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> anyhow::Result<reqwest::Response> {
        let token = self.token()?;
        let http = http_client(self.ca_file().as_deref(), timeout)?;
        let mut last = None;
        for base in self
            .endpoint
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let mut req = http
                .request(
                    method.clone(),
                    format!("{}{}", base.trim_end_matches('/'), path),
                )
                .bearer_auth(&token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        match last {
            Some(e) => Err(anyhow::anyhow!("no endpoint reachable: {e}")),
            None => bail!("no endpoint given"),
        }
    }

    /// Sends a request (see [`Conn::send`]) and returns its JSON answer, or the error it names.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let resp = self
            .send(method, path, body, Duration::from_secs(15))
            .await?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = value["error"]["message"].as_str().unwrap_or("");
            bail!("{status}: {msg}");
        }
        Ok(value)
    }

    pub fn print(&self, value: &Value, readable: impl FnOnce(&Value) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{}", readable(value));
        }
    }
}

#[derive(Subcommand)]
pub enum FlagCmd {
    /// Show one flag.
    Get {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        key: String,
    },
    /// List the flags of a namespace.
    List {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
    },
    /// Create or replace a flag from a JSON definition (inline or `@file`).
    Set {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        key: String,
        definition: String,
    },
    /// Turn a flag on (`state: ENABLED`).
    Enable {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        key: String,
    },
    /// Kill switch: `state: DISABLED`.
    Disable {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        key: String,
    },
    /// Replace a namespace's flags and segments with a flagd document (atomic).
    Import {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        /// Path of the flagd `flags.json` document.
        file: std::path::PathBuf,
    },
    /// Print a namespace as a flagd document.
    Export {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
    },
    /// Who changed what, newest first.
    History {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        /// Only changes to this flag or segment.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Delete a flag.
    Delete {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        key: String,
    },
}

/// One command's request, and how its answer reads without `--json`.
pub struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    show: Box<dyn FnOnce(&Value) -> String>,
}

impl Call {
    fn new(method: Method, path: String, show: impl FnOnce(&Value) -> String + 'static) -> Self {
        Call {
            method,
            path,
            body: None,
            show: Box::new(show),
        }
    }

    fn with(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

impl Conn {
    /// Sends `call` and prints its answer.
    pub async fn run(&self, call: Call) -> anyhow::Result<()> {
        let v = self.call(call.method, &call.path, call.body).await?;
        self.print(&v, call.show);
        Ok(())
    }
}

/// A write's answer.
fn revision(v: &Value) -> String {
    format!("ok: revision {}", v["revision"])
}

/// JSON from `text`, or from the file `@path` names.
fn json_arg(text: String, what: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => text,
    };
    serde_json::from_str(&text).with_context(|| format!("{what} is not valid JSON"))
}

pub async fn flag(cmd: FlagCmd) -> anyhow::Result<()> {
    let flag = |ns: &str, key: &str| format!("/v1/namespaces/{ns}/flags/{key}");
    let (conn, call) = match cmd {
        FlagCmd::Get {
            conn,
            namespace,
            key,
        } => (
            conn,
            Call::new(Method::GET, flag(&namespace, &key), show_flag),
        ),
        FlagCmd::List { conn, namespace } => {
            let path = format!("/v1/namespaces/{namespace}/flags");
            (conn, Call::new(Method::GET, path, flag_table))
        }
        FlagCmd::Set {
            conn,
            namespace,
            key,
            definition,
        } => {
            let def = json_arg(definition, "the definition")?;
            (
                conn,
                Call::new(Method::PUT, flag(&namespace, &key), revision).with(def),
            )
        }
        FlagCmd::Enable {
            conn,
            namespace,
            key,
        } => (conn, set_state(flag(&namespace, &key), "ENABLED")),
        FlagCmd::Disable {
            conn,
            namespace,
            key,
        } => (conn, set_state(flag(&namespace, &key), "DISABLED")),
        FlagCmd::Import {
            conn,
            namespace,
            file,
        } => {
            let doc = json_arg(format!("@{}", file.display()), "the document")?;
            let path = format!("/v1/namespaces/{namespace}/flagd");
            (conn, Call::new(Method::PUT, path, imported).with(doc))
        }
        FlagCmd::Export { conn, namespace } => {
            // A flagd document, printed as it is.
            let path = format!("/v1/namespaces/{namespace}/flagd");
            let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
            (conn, Call::new(Method::GET, path, pretty))
        }
        FlagCmd::History {
            conn,
            namespace,
            key,
            limit,
        } => {
            let mut path = format!("/v1/namespaces/{namespace}/history?limit={limit}");
            if let Some(k) = key {
                path.push_str(&format!("&key={k}"));
            }
            (conn, Call::new(Method::GET, path, history_table))
        }
        FlagCmd::Delete {
            conn,
            namespace,
            key,
        } => (
            conn,
            Call::new(Method::DELETE, flag(&namespace, &key), revision),
        ),
    };
    conn.run(call).await
}

/// Enable or disable (kill switch) the flag at `path`: a merge patch of its `state`.
fn set_state(path: String, state: &str) -> Call {
    Call::new(Method::PATCH, path, revision).with(json!({ "state": state }))
}

fn show_flag(v: &Value) -> String {
    format!(
        "{}/{} version {} (by {})\n{}",
        v["namespace"].as_str().unwrap_or("?"),
        v["key"].as_str().unwrap_or("?"),
        v["version"],
        v["updated_by"].as_str().unwrap_or("?"),
        serde_json::to_string_pretty(&v["definition"]).unwrap_or_default()
    )
}

fn flag_table(v: &Value) -> String {
    let mut out = format!(
        "{:<32} {:<9} {:<16} {}",
        "KEY", "STATE", "DEFAULT", "VERSION"
    );
    for f in v["flags"].as_array().into_iter().flatten() {
        let d = &f["definition"];
        out.push_str(&format!(
            "\n{:<32} {:<9} {:<16} {}",
            f["key"].as_str().unwrap_or(""),
            d["state"].as_str().unwrap_or(""),
            d["defaultVariant"].as_str().unwrap_or(""),
            f["version"]
        ));
    }
    out
}

fn imported(v: &Value) -> String {
    let mut out = format!(
        "imported {} flags and {} segments: revision {}",
        v["flags"], v["segments"], v["revision"]
    );
    // What flagd accepts but a single write would refuse, evaluated as flagd does.
    for w in v["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\nwarning: {}: {}",
            w["path"].as_str().unwrap_or_default(),
            w["message"].as_str().unwrap_or_default()
        ));
    }
    out
}

pub async fn cluster_status(conn: &Conn) -> anyhow::Result<()> {
    let v = conn.call(Method::GET, "/v1/cluster", None).await?;
    conn.print(&v, |v| {
        let mut out = format!(
            "cluster {}  leader {}  term {}  revision {}\n{:<4} {:<8} {:<7} {:<26} {}",
            v["cluster_id"].as_str().unwrap_or("?"),
            v["leader"],
            v["term"],
            v["revision"],
            "ID",
            "ROLE",
            "LEADER",
            "API",
            "MATCHED"
        );
        for m in v["members"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n{:<4} {:<8} {:<7} {:<26} {}",
                m["id"],
                m["role"].as_str().unwrap_or(""),
                if m["is_leader"].as_bool() == Some(true) {
                    "*"
                } else {
                    ""
                },
                m["api_addr"].as_str().unwrap_or(""),
                m["matched_index"]
            ));
        }
        out
    });
    Ok(())
}

pub async fn cluster_init(conn: &Conn, members: &[String]) -> anyhow::Result<()> {
    let mut list = Vec::new();
    for m in members {
        let (id, addrs) = m
            .split_once('=')
            .context("member must look like ID=API_URL,PEER_URL")?;
        let (api, peer) = addrs
            .split_once(',')
            .context("member must look like ID=API_URL,PEER_URL")?;
        let id: u64 = id.parse().context("member id must be a positive integer")?;
        list.push(json!({"id": id, "api_addr": api, "peer_addr": peer}));
    }
    let init = Call::new(Method::POST, "/v1/cluster/init".into(), |_| {
        "initialized".into()
    });
    conn.run(init.with(json!({ "members": list }))).await
}

pub async fn add_learner(conn: &Conn, id: u64, api: &str, peer: &str) -> anyhow::Result<()> {
    let body = json!({"id": id, "api_addr": api, "peer_addr": peer});
    let added = move |_: &Value| format!("node {id} added as a learner");
    conn.run(Call::new(Method::POST, "/v1/cluster/learners".into(), added).with(body))
        .await
}

pub async fn promote(conn: &Conn, id: u64) -> anyhow::Result<()> {
    let promoted = move |_: &Value| format!("node {id} is now a voter");
    let call = Call::new(Method::POST, "/v1/cluster/voters".into(), promoted);
    conn.run(call.with(json!({ "id": id }))).await
}

pub async fn remove(conn: &Conn, id: u64) -> anyhow::Result<()> {
    let removed = move |_: &Value| format!("node {id} removed");
    conn.run(Call::new(
        Method::DELETE,
        format!("/v1/cluster/members/{id}"),
        removed,
    ))
    .await
}

#[derive(Subcommand)]
pub enum NamespaceCmd {
    /// Create a namespace (or update its description).
    Create {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a namespace with all its flags, segments and SDK keys.
    Delete {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
    },
}

pub async fn namespace(cmd: NamespaceCmd) -> anyhow::Result<()> {
    let (conn, call) = match cmd {
        NamespaceCmd::Create {
            conn,
            namespace,
            description,
        } => {
            let body = json!({ "description": description });
            let path = format!("/v1/namespaces/{namespace}");
            (conn, Call::new(Method::PUT, path, revision).with(body))
        }
        NamespaceCmd::List { conn } => (
            conn,
            Call::new(Method::GET, "/v1/namespaces".into(), namespace_table),
        ),
        NamespaceCmd::Delete { conn, namespace } => {
            let path = format!("/v1/namespaces/{namespace}");
            (conn, Call::new(Method::DELETE, path, revision))
        }
    };
    conn.run(call).await
}

fn namespace_table(v: &Value) -> String {
    let mut out = format!(
        "{:<32} {:<6} {:<8} {}",
        "NAMESPACE", "FLAGS", "SEGMENTS", "DESCRIPTION"
    );
    for n in v["namespaces"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n{:<32} {:<6} {:<8} {}",
            n["name"].as_str().unwrap_or(""),
            n["flags"],
            n["segments"],
            n["description"].as_str().unwrap_or("")
        ));
    }
    out
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an SDK key for a namespace; the secret is printed once.
    Create {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        name: String,
    },
    List {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
    },
    /// Revoke an SDK key on every node (within the staleness bound) and close its streams.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        namespace: String,
        name: String,
    },
}

pub async fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    let keys = |ns: &str| format!("/v1/namespaces/{ns}/sdk-keys");
    let (conn, call) = match cmd {
        KeyCmd::Create {
            conn,
            namespace,
            name,
        } => {
            let secret = |v: &Value| {
                let secret = v["secret"].as_str().unwrap_or("");
                format!("{secret}\n(shown once; store it now)")
            };
            let body = json!({ "name": name });
            (
                conn,
                Call::new(Method::POST, keys(&namespace), secret).with(body),
            )
        }
        KeyCmd::List { conn, namespace } => {
            (conn, Call::new(Method::GET, keys(&namespace), key_table))
        }
        KeyCmd::Revoke {
            conn,
            namespace,
            name,
        } => {
            let path = format!("{}/{name}", keys(&namespace));
            let revoked = |v: &Value| format!("revoked: revision {}", v["revision"]);
            (conn, Call::new(Method::DELETE, path, revoked))
        }
    };
    conn.run(call).await
}

fn key_table(v: &Value) -> String {
    let mut out = format!("{:<24} {:<16} {}", "NAME", "CREATED BY", "CREATED AT (ms)");
    for k in v["sdk_keys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n{:<24} {:<16} {}",
            k["name"].as_str().unwrap_or(""),
            k["created_by"].as_str().unwrap_or(""),
            k["created_at_ms"]
        ));
    }
    out
}

fn history_table(v: &Value) -> String {
    let mut out = format!(
        "{:<9} {:<14} {:<12} CHANGED",
        "REVISION", "AT (ms)", "ACTOR"
    );
    for c in v["changes"].as_array().into_iter().flatten() {
        let items: Vec<String> = c["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                let verb = match (i["before"].is_null(), i["after"].is_null()) {
                    (true, _) => "+",
                    (_, true) => "-",
                    _ => "~",
                };
                format!(
                    "{verb}{} {}",
                    i["kind"].as_str().unwrap_or(""),
                    i["key"].as_str().unwrap_or("")
                )
            })
            .collect();
        out.push_str(&format!(
            "\n{:<9} {:<14} {:<12} {}",
            c["revision"],
            c["at_ms"],
            c["actor"].as_str().unwrap_or(""),
            items.join(", ")
        ));
    }
    out
}
