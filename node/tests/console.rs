//! The web console's security and write paths over HTTP against real nodes: sign-in, sessions
//! accepted by every node, CSRF and cross-origin refusals, revoked tokens, conflicts, and
//! invalid edits that never reach the log. (The browser walk-through is `tests/ui/run.sh`.)

mod common;

use std::time::Duration;

use common::{bool_flag, experiment_flag, TestCluster, TOKEN};
use flagstaff_node::NodeConfig;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::json;

fn defaults(_: &mut NodeConfig) {}

struct Browser {
    http: reqwest::Client,
}

struct Page {
    status: u16,
    location: String,
    cookies: Vec<String>,
    html: String,
}

impl Page {
    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self
            .html
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        self.html[at..].split('"').next().unwrap().to_string()
    }

    /// `name=value` of a cookie this answer set.
    fn cookie(&self, name: &str) -> String {
        let set = self
            .cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} cookie in {:?}", self.cookies));
        set.split(';').next().unwrap().to_string()
    }
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let cookies = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let html = resp.text().await.unwrap_or_default();
        Page {
            status,
            location,
            cookies,
            html,
        }
    }

    async fn get(&self, url: &str, cookie: &str) -> Page {
        self.send(self.http.get(url).header(COOKIE, cookie)).await
    }

    async fn post(
        &self,
        url: &str,
        cookie: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = self
            .http
            .post(url)
            .header(COOKIE, cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        self.send(req).await
    }

    /// Signs in on `api` with `token`; the session cookie (`name=value`).
    async fn sign_in(&self, api: &str, token: &str) -> Page {
        let form = self.get(&format!("{api}/ui/login"), "").await;
        assert_eq!(form.status, 200);
        let login = form.cookie("flagstaff_login");
        self.post(
            &format!("{api}/ui/login"),
            &login,
            &[
                ("csrf", &form.csrf()),
                ("token", token),
                ("next", "/ui/namespaces"),
            ],
            None,
        )
        .await
    }
}

fn new_flag_fields<'a>(csrf: &'a str, key: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("key", key),
        ("state", "ENABLED"),
        ("value_type", "boolean"),
        ("variant_name", "on"),
        ("variant_value", "true"),
        ("variant_name", "off"),
        ("variant_value", "false"),
        ("default_variant", "off"),
        ("action", "save"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_csrf_and_conditional_saves() {
    let c = TestCluster::start(3, defaults).await;
    c.create_namespace(1, "ui").await;
    let b = Browser::new();
    let (api1, api2, api3) = (&c.node(1).api, &c.node(2).api, &c.node(3).api);

    // No session: every page sends the browser to sign-in, remembering where it was.
    let p = b.get(&format!("{api1}/ui/ns/ui/flags"), "").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location, "/ui/login?next=%2Fui%2Fns%2Fui%2Fflags");

    // An htmx fragment without a session sends the whole page to sign-in.
    let frag = b
        .send(
            b.http
                .get(format!("{api1}/ui/cluster/members"))
                .header("hx-request", "true"),
        )
        .await;
    assert_eq!(frag.status, 401);
    let hx = b
        .http
        .get(format!("{api1}/ui/cluster/members"))
        .header("hx-request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hx.headers()["hx-redirect"],
        "/ui/login?next=%2Fui%2Fcluster%2Fmembers"
    );

    // Sign-in: a wrong token, a form without its nonce cookie, a cross-site post, a `next` with
    // control characters, then the admin token.
    let form = b.get(&format!("{api1}/ui/login"), "").await;
    let login = form.cookie("flagstaff_login");
    let wrong = b
        .post(
            &format!("{api1}/ui/login"),
            &login,
            &[("csrf", &form.csrf()), ("token", "nope")],
            None,
        )
        .await;
    assert_eq!(wrong.status, 401);
    let no_nonce = b
        .post(
            &format!("{api1}/ui/login"),
            "",
            &[("csrf", &form.csrf()), ("token", TOKEN)],
            None,
        )
        .await;
    assert_eq!(no_nonce.status, 403);
    let fields = [("csrf", form.csrf()), ("token", TOKEN.to_string())];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cross = b
        .post(
            &format!("{api1}/ui/login"),
            &login,
            &fields,
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(cross.status, 403);
    let crlf = b
        .post(
            &format!("{api1}/ui/login"),
            &login,
            &[
                ("csrf", &form.csrf()),
                ("token", TOKEN),
                ("next", "/ui/x\r\nSet-Cookie: a=b"),
            ],
            None,
        )
        .await;
    assert_eq!(crlf.status, 303);
    assert_eq!(crlf.location, "/ui/namespaces");
    let signed = b.sign_in(api1, TOKEN).await;
    assert_eq!(signed.status, 303, "{}", signed.html);
    assert_eq!(signed.location, "/ui/namespaces");
    let set = signed
        .cookies
        .iter()
        .find(|c| c.starts_with("flagstaff_session="))
        .unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ui"),
        "{set}"
    );
    let session = signed.cookie("flagstaff_session");

    // Every node accepts the session; a changed cookie is refused.
    for api in [api1, api2, api3] {
        let p = b.get(&format!("{api}/ui/ns/ui/flags"), &session).await;
        assert_eq!(p.status, 200, "{api}");
        assert!(p.html.contains("signed in as <strong>admin</strong>"));
    }
    // The cluster page: every member answered this node with its own state.
    let p = b.get(&format!("{api2}/ui/cluster"), &session).await;
    assert_eq!(p.status, 200);
    assert_eq!(
        p.html.matches("health health-ready").count(),
        3,
        "{}",
        p.html
    );
    assert_eq!(p.html.matches("<td>leader</td>").count(), 1, "{}", p.html);
    let last = if session.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &session[..session.len() - 1]);
    assert_eq!(
        b.get(&format!("{api2}/ui/ns/ui/flags"), &tampered)
            .await
            .status,
        303
    );

    // CSRF: no token, another session's token, or a cross-site Origin: refused, nothing written.
    let page = b.get(&format!("{api2}/ui/ns/ui/new-flag"), &session).await;
    let csrf = page.csrf();
    let other = b.sign_in(api1, TOKEN).await.cookie("flagstaff_session");
    let other_csrf = b.get(&format!("{api1}/ui/namespaces"), &other).await.csrf();
    assert_ne!(csrf, other_csrf);
    let url = format!("{api2}/ui/ns/ui/new-flag");
    let rev = c.revision(1);
    for (fields, origin) in [
        (new_flag_fields("", "f"), None),
        (new_flag_fields(&other_csrf, "f"), None),
        (new_flag_fields(&csrf, "f"), Some("http://evil.example")),
    ] {
        let p = b.post(&url, &session, &fields, origin).await;
        assert_eq!(p.status, 403, "{fields:?} {origin:?}");
    }
    assert_eq!(c.get(1, "/v1/namespaces/ui/flags/f").await.0, 404);
    assert_eq!(c.revision(1), rev, "a refused form wrote nothing");

    // An invalid edit shows its faults with paths and never reaches the log.
    let mut bad = new_flag_fields(&csrf, "f");
    bad.push(("targeting", r#"{"if": [{"frobnicate": [1]}, "on", "off"]}"#));
    let p = b.post(&url, &session, &bad, None).await;
    assert_eq!(p.status, 400);
    assert!(p.html.contains("targeting.if[0].frobnicate"), "{}", p.html);
    assert_eq!(c.revision(1), rev);

    // A valid one is written, as the signed-in admin, through a follower.
    let host = api2.trim_start_matches("http://");
    let origin = format!("http://{host}");
    let p = b
        .post(&url, &session, &new_flag_fields(&csrf, "f"), Some(&origin))
        .await;
    assert_eq!(p.status, 303, "{}", p.html);
    assert!(
        p.location.starts_with("/ui/ns/ui/flags/f?saved="),
        "{}",
        p.location
    );
    let (status, flag) = c.get(1, "/v1/namespaces/ui/flags/f").await;
    assert_eq!(status, 200);
    assert_eq!(flag["definition"], bool_flag("off"));
    assert_eq!(flag["updated_by"], "admin");
    let version = flag["version"].to_string();

    // A save from an editor loaded at an older version is a conflict page; the flag keeps the
    // other change.
    let (s, _, _) = c
        .request(
            1,
            reqwest::Method::PATCH,
            "/v1/namespaces/ui/flags/f",
            Some(json!({"description": "theirs"})),
        )
        .await;
    assert_eq!(s, 200);
    let mut stale = new_flag_fields(&csrf, "f");
    stale.retain(|(k, _)| *k != "key");
    stale.push(("version", &version));
    stale.push(("description", "mine"));
    let p = b
        .post(&format!("{api3}/ui/ns/ui/flags/f"), &session, &stale, None)
        .await;
    assert_eq!(p.status, 409, "{}", p.html);
    // Both definitions are on the page (JSON, HTML-escaped), theirs first.
    let (theirs, mine) = (
        "&quot;description&quot;: &quot;theirs&quot;",
        "&quot;description&quot;: &quot;mine&quot;",
    );
    let (t, m) = (p.html.find(theirs), p.html.find(mine));
    assert!(t.is_some() && m.is_some() && t < m, "{}", p.html);
    assert_eq!(
        c.get(1, "/v1/namespaces/ui/flags/f").await.1["definition"]["description"],
        "theirs"
    );

    // A session of a revoked admin token ends on every node.
    let (s, created) = c.post(1, "/v1/admin-tokens", json!({"name": "ops"})).await;
    assert_eq!(s, 200, "{created}");
    let secret = created["secret"].as_str().unwrap();
    let min_rev = created["revision"].as_u64().unwrap();
    for id in 1..=3 {
        let path = format!("/v1/namespaces/ui?consistency=bounded&min_revision={min_rev}");
        assert_eq!(c.get(id, &path).await.0, 200);
    }
    let ops = b.sign_in(api3, secret).await;
    assert_eq!(ops.status, 303, "{}", ops.html);
    let ops = ops.cookie("flagstaff_session");
    assert_eq!(
        b.get(&format!("{api2}/ui/namespaces"), &ops).await.status,
        200
    );
    let (s, revoked, _) = c
        .request(1, reqwest::Method::DELETE, "/v1/admin-tokens/ops", None)
        .await;
    assert_eq!(s, 200, "{revoked}");
    let rev = revoked["revision"].as_u64().unwrap();
    for (id, api) in [(1, api1), (2, api2), (3, api3)] {
        // Once a node has applied the revocation, it refuses the session.
        assert_eq!(
            c.get(
                id,
                &format!("/v1/namespaces/ui?consistency=bounded&min_revision={rev}")
            )
            .await
            .0,
            200
        );
        assert_eq!(
            b.get(&format!("{api}/ui/namespaces"), &ops).await.status,
            303,
            "{api}"
        );
    }

    // A token created again under the revoked name is another credential: the old session
    // stays refused, a new sign-in works.
    let (s, again) = c.post(1, "/v1/admin-tokens", json!({"name": "ops"})).await;
    assert_eq!(s, 200, "{again}");
    let rev = again["revision"].as_u64().unwrap();
    for (id, api) in [(1, api1), (2, api2), (3, api3)] {
        let path = format!("/v1/namespaces/ui?consistency=bounded&min_revision={rev}");
        assert_eq!(c.get(id, &path).await.0, 200);
        assert_eq!(
            b.get(&format!("{api}/ui/namespaces"), &ops).await.status,
            303,
            "{api}"
        );
    }
    let fresh = b.sign_in(api2, again["secret"].as_str().unwrap()).await;
    assert_eq!(fresh.status, 303);
    let fresh = fresh.cookie("flagstaff_session");
    assert_eq!(
        b.get(&format!("{api1}/ui/namespaces"), &fresh).await.status,
        200
    );

    // Sign-out clears the cookie in this browser. (The cookie itself stays valid until it
    // expires or its token is revoked, as README says: sign-out is not a server-side
    // revocation.)
    let csrf = b
        .get(&format!("{api1}/ui/namespaces"), &session)
        .await
        .csrf();
    let out = b
        .post(
            &format!("{api1}/ui/logout"),
            &session,
            &[("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(out.status, 303);
    assert!(out
        .cookies
        .iter()
        .any(|c| c.starts_with("flagstaff_session=;") && c.contains("Max-Age=0")));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_experiment_page_shows_results_and_ships_a_variant() {
    let c = TestCluster::start(3, defaults).await;
    let leader = c.wait_leader().await;
    c.create_namespace(leader, "shop").await;
    let (s, b) = c
        .put(
            leader,
            "/v1/namespaces/shop/flags/checkout",
            experiment_flag("old", "new"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // A skewed split with conversions: the page must say so in words.
    let (s, b) = c
        .post(
            leader,
            "/v1/namespaces/shop/events",
            json!({"batch": "console-1", "track": (0..40).map(|i| json!({"event": "purchase",
                "context": {"targetingKey": format!("u{i}")}})).collect::<Vec<_>>(),
              "exposures": [{"flag": "checkout", "variant": "old", "count": 3000},
                            {"flag": "checkout", "variant": "new", "count": 1000}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let b = Browser::new();
    let api = &c.node(leader).api;
    let session = b.sign_in(api, TOKEN).await.cookie("flagstaff_session");

    let list = b
        .get(&format!("{api}/ui/ns/shop/experiments"), &session)
        .await;
    assert_eq!(list.status, 200, "{}", list.html);
    assert!(list.html.contains("/ui/ns/shop/experiments/checkout"));
    let page = b
        .get(&format!("{api}/ui/ns/shop/experiments/checkout"), &session)
        .await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html.contains("<svg"),
        "charts are drawn: {}",
        page.html
    );
    assert!(page.html.contains("Metric purchase"));
    // Exposures without distinct users: not enough to check the split yet.
    assert!(page.html.contains("Not enough users yet"), "{}", page.html);
    let flags = b.get(&format!("{api}/ui/ns/shop/flags"), &session).await;
    assert!(flags.html.contains("Last evaluated"));

    // Stop and ship "new": one flag write; the page then shows the stopped experiment.
    let version = page.html.split("name=\"version\" value=\"").nth(1).unwrap();
    let version = version.split('"').next().unwrap().to_string();
    let shipped = b
        .post(
            &format!("{api}/ui/ns/shop/experiments/checkout/ship"),
            &session,
            &[
                ("csrf", &page.csrf()),
                ("version", &version),
                ("control", "old"),
                ("variant", "new"),
            ],
            None,
        )
        .await;
    assert_eq!(shipped.status, 303, "{}", shipped.html);
    let (s, flag) = c.get(leader, "/v1/namespaces/shop/flags/checkout").await;
    assert_eq!(s, 200);
    assert_eq!(flag["definition"]["defaultVariant"], "new");
    assert!(flag["definition"].get("experiment").is_none());
    assert!(flag["definition"].get("targeting").is_none());
    assert_eq!(flag["updated_by"], "admin");
    let after = b.get(&format!("{api}{}", shipped.location), &session).await;
    assert_eq!(after.status, 200, "{}", after.html);
    assert!(after.html.contains("stopped"));
    c.shutdown().await;
}
