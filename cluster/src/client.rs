//! Command-line client: talks to any node (trying each endpoint in turn), prints readable
//! output or `--json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use flagstaff_api::admin::{FlagList, ItemInfo, NamespaceList, NamespaceSpec};
use flagstaff_api::cluster::{
    ClusterStatus, InitSpec, Initialized, MemberSpec, MembershipChanged, PromoteSpec,
};
use flagstaff_api::flagd::Imported;
use flagstaff_api::history::HistoryPage;
use flagstaff_api::keys::{NameSpec, Revoked, SdkKeyList, SecretCreated};
use flagstaff_api::ErrorBody;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
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
            let msg = ErrorBody::deserialize(&value)
                .map(|b| b.error.message)
                .unwrap_or_default();
            bail!("{status}: {msg}");
        }
        Ok(value)
    }

    /// Prints `value` as it came with `--json`, else as `show` reads it.
    pub fn print(&self, value: &Value, show: Show) -> anyhow::Result<()> {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{}", show(value)?);
        }
        Ok(())
    }
}

/// How an answer reads without `--json`.
pub type Show = Box<dyn FnOnce(&Value) -> anyhow::Result<String>>;

/// Reads an answer as the `T` of `flagstaff-api` it is, then as `show` writes it.
pub fn typed<T: DeserializeOwned>(show: impl FnOnce(T) -> String + 'static) -> Show {
    Box::new(move |v| {
        let answer = T::deserialize(v).context("the node answered in an unexpected shape")?;
        Ok(show(answer))
    })
}

/// A body of `flagstaff-api` as JSON.
fn body(spec: impl serde::Serialize) -> Value {
    serde_json::to_value(spec).unwrap_or(Value::Null)
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
    show: Show,
}

impl Call {
    fn new<T: DeserializeOwned>(
        method: Method,
        path: String,
        show: impl FnOnce(T) -> String + 'static,
    ) -> Self {
        Call {
            method,
            path,
            body: None,
            show: typed(show),
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
        self.print(&v, call.show)
    }
}

/// Every write answers its revision.
#[derive(Deserialize)]
struct Written {
    revision: u64,
}

/// A write's answer.
fn revision(w: Written) -> String {
    format!("ok: revision {}", w.revision)
}

/// An optional number as the JSON answer writes it.
fn or_null(n: Option<u64>) -> String {
    n.map_or_else(|| "null".to_string(), |n| n.to_string())
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
            let pretty = |v: Value| serde_json::to_string_pretty(&v).unwrap_or_default();
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

fn show_flag(f: ItemInfo) -> String {
    format!(
        "{}/{} version {} (by {})\n{}",
        f.namespace,
        f.key,
        f.version,
        f.updated_by,
        serde_json::to_string_pretty(&f.definition).unwrap_or_default()
    )
}

fn flag_table(list: FlagList) -> String {
    let mut out = format!(
        "{:<32} {:<9} {:<16} {}",
        "KEY", "STATE", "DEFAULT", "VERSION"
    );
    for f in list.flags {
        // The definition as stored: any JSON (null when it does not parse).
        let d = &f.definition;
        out.push_str(&format!(
            "\n{:<32} {:<9} {:<16} {}",
            f.key,
            d["state"].as_str().unwrap_or(""),
            d["defaultVariant"].as_str().unwrap_or(""),
            f.version
        ));
    }
    out
}

fn imported(i: Imported) -> String {
    let mut out = format!(
        "imported {} flags and {} segments: revision {}",
        i.flags, i.segments, i.revision
    );
    // What flagd accepts but a single write would refuse, evaluated as flagd does.
    for w in i.warnings {
        out.push_str(&format!("\nwarning: {}: {}", w.path, w.message));
    }
    out
}

pub async fn cluster_status(conn: &Conn) -> anyhow::Result<()> {
    let v = conn.call(Method::GET, "/v1/cluster", None).await?;
    conn.print(&v, typed(cluster_table))
}

fn cluster_table(c: ClusterStatus) -> String {
    let mut out = format!(
        "cluster {}  leader {}  term {}  revision {}\n{:<4} {:<8} {:<7} {:<26} {}",
        c.cluster_id,
        or_null(c.leader),
        c.term,
        c.revision,
        "ID",
        "ROLE",
        "LEADER",
        "API",
        "MATCHED"
    );
    for m in c.members {
        let role = serde_json::to_value(m.role).unwrap_or_default();
        out.push_str(&format!(
            "\n{:<4} {:<8} {:<7} {:<26} {}",
            m.id,
            role.as_str().unwrap_or(""),
            if m.is_leader { "*" } else { "" },
            m.api_addr,
            or_null(m.matched_index)
        ));
    }
    out
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
        list.push(member(id, api, peer));
    }
    let init = Call::new(Method::POST, "/v1/cluster/init".into(), |_: Initialized| {
        "initialized".into()
    });
    conn.run(init.with(body(InitSpec { members: list }))).await
}

fn member(id: u64, api: &str, peer: &str) -> MemberSpec {
    MemberSpec {
        id,
        api_addr: api.to_string(),
        peer_addr: peer.to_string(),
    }
}

pub async fn add_learner(conn: &Conn, id: u64, api: &str, peer: &str) -> anyhow::Result<()> {
    let added = move |_: MembershipChanged| format!("node {id} added as a learner");
    let call = Call::new(Method::POST, "/v1/cluster/learners".into(), added);
    conn.run(call.with(body(member(id, api, peer)))).await
}

pub async fn promote(conn: &Conn, id: u64) -> anyhow::Result<()> {
    let promoted = move |_: MembershipChanged| format!("node {id} is now a voter");
    let call = Call::new(Method::POST, "/v1/cluster/voters".into(), promoted);
    conn.run(call.with(body(PromoteSpec { id }))).await
}

pub async fn remove(conn: &Conn, id: u64) -> anyhow::Result<()> {
    let removed = move |_: MembershipChanged| format!("node {id} removed");
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
            let spec = NamespaceSpec {
                description: Some(description),
            };
            let path = format!("/v1/namespaces/{namespace}");
            (
                conn,
                Call::new(Method::PUT, path, revision).with(body(spec)),
            )
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

fn namespace_table(list: NamespaceList) -> String {
    let mut out = format!(
        "{:<32} {:<6} {:<8} {}",
        "NAMESPACE", "FLAGS", "SEGMENTS", "DESCRIPTION"
    );
    for n in list.namespaces {
        out.push_str(&format!(
            "\n{:<32} {:<6} {:<8} {}",
            n.name, n.flags, n.segments, n.description
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
            let secret = |c: SecretCreated| format!("{}\n(shown once; store it now)", c.secret);
            (
                conn,
                Call::new(Method::POST, keys(&namespace), secret).with(body(NameSpec { name })),
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
            let revoked = |r: Revoked| format!("revoked: revision {}", r.revision);
            (conn, Call::new(Method::DELETE, path, revoked))
        }
    };
    conn.run(call).await
}

fn key_table(list: SdkKeyList) -> String {
    let mut out = format!("{:<24} {:<16} {}", "NAME", "CREATED BY", "CREATED AT (ms)");
    for k in list.sdk_keys {
        out.push_str(&format!(
            "\n{:<24} {:<16} {}",
            k.name, k.created_by, k.created_at_ms
        ));
    }
    out
}

fn history_table(page: HistoryPage) -> String {
    let mut out = format!(
        "{:<9} {:<14} {:<12} CHANGED",
        "REVISION", "AT (ms)", "ACTOR"
    );
    for c in page.changes {
        let items: Vec<String> = c
            .items
            .iter()
            .map(|i| {
                let verb = match (&i.before, &i.after) {
                    (None, _) => "+",
                    (_, None) => "-",
                    _ => "~",
                };
                let kind = serde_json::to_value(i.kind).unwrap_or_default();
                format!("{verb}{} {}", kind.as_str().unwrap_or(""), i.key)
            })
            .collect();
        out.push_str(&format!(
            "\n{:<9} {:<14} {:<12} {}",
            c.revision,
            c.at_ms,
            c.actor,
            items.join(", ")
        ));
    }
    out
}
