//! The operator console, server side: sign-in, sessions, CSRF, every page's status and
//! content, and that its actions are the API's. (`browser.rs` drives it in Chromium.)

use std::collections::BTreeMap;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::common::*;

/// A browser, as far as the console can tell: cookies, no redirects followed.
pub struct Visitor {
    base: String,
    http: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
    /// The raw `Set-Cookie` headers of the last answer.
    pub set_cookies: Vec<String>,
    /// The CSRF token of the last page that had one.
    pub csrf: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

fn csrf_of(body: &str) -> Option<String> {
    let at = body.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    Some(body[at..at + body[at..].find('"')?].to_string())
}

impl Visitor {
    pub fn new(app: &TestApp) -> Self {
        Visitor {
            base: app.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
            set_cookies: vec![],
            csrf: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Answer {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = if cookie.is_empty() {
            req
        } else {
            req.header("cookie", cookie)
        };
        let r = req.send().await.unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        self.set_cookies = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &self.set_cookies {
            let pair = c.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.into(), value.into());
            }
        }
        let body = r.text().await.unwrap();
        if let Some(t) = csrf_of(&body) {
            self.csrf = Some(t);
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// Posts a form with the current CSRF token.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let csrf = self.csrf.clone().unwrap_or_default();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(form);
        self.post_exactly(path, &all).await
    }

    /// Posts exactly these fields.
    pub async fn post_exactly(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Opens the sign-in page and signs in with `token`.
    pub async fn sign_in(&mut self, token: &str) -> Answer {
        let page = self.get("/console/login").await;
        assert_eq!(page.status, StatusCode::OK);
        self.post("/console/login", &[("token", token), ("next", "/console")])
            .await
    }

    pub async fn signed_in(app: &TestApp) -> Visitor {
        let mut v = Visitor::new(app);
        let a = v.sign_in(TOKEN).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert_eq!(a.location(), "/console");
        // The overview carries the session's CSRF token.
        let overview = v.get("/console").await;
        assert_eq!(overview.status, StatusCode::OK);
        v
    }

    /// A page that must answer 200; its body.
    pub async fn page(&mut self, path: &str) -> String {
        let a = self.get(path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert!(
            a.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        a.body
    }
}

#[tokio::test]
async fn signing_in_takes_an_api_token_and_signing_out_ends_the_session() {
    let app = TestApp::builder().start().await;
    let mut v = Visitor::new(&app);

    let first = v.get("/console/consents?status=active").await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(
        first.location(),
        "/console/login?next=%2Fconsole%2Fconsents%3Fstatus%3Dactive"
    );

    let form = v.get("/console/login").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body
            .contains(r#"<label for="token">API token</label>"#)
    );
    assert!(
        form.body
            .contains(r#"<button type="submit">Sign in</button>"#)
    );
    let sign_in_cookie = &v.set_cookies[0];
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(sign_in_cookie.contains(attr), "{sign_in_cookie}");
    }
    assert!(
        !sign_in_cookie.contains("Secure"),
        "plain http: {sign_in_cookie}"
    );

    let wrong = v
        .post("/console/login", &[("token", "not-the-token")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong
            .body
            .contains("That token is not one of this service&#39;s API tokens.")
            || wrong
                .body
                .contains("That token is not one of this service's API tokens."),
        "{}",
        wrong.body
    );
    assert!(!v.cookies.contains_key("aa_console"));

    let right = v
        .post(
            "/console/login",
            &[
                ("token", TOKEN),
                ("next", "/console/consents?status=active"),
            ],
        )
        .await;
    assert_eq!(right.status, StatusCode::SEE_OTHER, "{}", right.body);
    assert_eq!(right.location(), "/console/consents?status=active");
    let session = v
        .set_cookies
        .iter()
        .find(|c| c.starts_with("aa_console="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(!session.contains(TOKEN), "the cookie never holds the token");
    let overview = v.page("/console").await;
    assert!(overview.contains("<h1>Overview</h1>"));
    assert!(overview.contains("Sign out"));

    // Signing out deletes the session: the same cookie, replayed, no longer signs in.
    let stolen = v.cookies.clone();
    let out = v.post("/console/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/console/login?signed_out=1");
    assert!(!v.cookies.contains_key("aa_console"));
    let mut replay = Visitor::new(&app);
    replay.cookies = stolen;
    let after = replay.get("/console").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location(), "/console/login");
    assert!(
        v.page("/console/login?signed_out=1")
            .await
            .contains("You are signed out.")
    );

    // A forged cookie (not signed with the deployment's key) is not a session either.
    let mut forged = Visitor::new(&app);
    forged.cookies.insert("aa_console".into(), "abc".into());
    assert_eq!(forged.get("/console").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_cookie_is_secure_behind_https_and_sessions_end_with_their_token() {
    // Two instances over one database, as behind a load balancer: a session from one is good
    // on the other (the cookie key is shared), until its token is no longer configured.
    let app = TestApp::builder()
        .env(&[("API_TOKENS", "token-a,token-b")])
        .start()
        .await;
    let mut v = Visitor::new(&app);
    let signed = v.sign_in("token-b").await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER);
    let cookies = v.cookies.clone();

    let both = TestApp::builder()
        .env(&[("API_TOKENS", "token-a,token-b")])
        .database(app.db_url.clone(), app.dir.clone())
        .start()
        .await;
    let mut there = Visitor::new(&both);
    there.cookies = cookies.clone();
    assert_eq!(there.get("/console").await.status, StatusCode::OK);

    let rotated = TestApp::builder()
        .env(&[
            ("API_TOKENS", "token-a"),
            ("PUBLIC_BASE_URL", "https://lender.example"),
        ])
        .database(app.db_url.clone(), app.dir.clone())
        .start()
        .await;
    let mut gone = Visitor::new(&rotated);
    gone.cookies = cookies;
    let refused = gone.get("/console").await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER);
    assert_eq!(refused.location(), "/console/login");

    let form = gone.get("/console/login").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        gone.set_cookies[0].contains("; Secure"),
        "{:?}",
        gone.set_cookies
    );
}

#[tokio::test]
async fn forms_without_the_csrf_token_are_refused_and_change_nothing() {
    let app = TestApp::builder().start().await;
    let consent_id = app.approved_consent("cust-console-csrf", json!({})).await;
    let mut v = Visitor::signed_in(&app).await;
    let pause = format!("/console/consents/{consent_id}/pause");

    let none = v.post_exactly(&pause, &[]).await;
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    assert!(none.body.contains("CSRF"), "{}", none.body);
    let wrong = v.post_exactly(&pause, &[("csrf", "0000")]).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let (_, consent) = app.get(&format!("/api/v1/consents/{consent_id}")).await;
    assert_eq!(consent["status"], "active", "nothing was paused");

    // Sign-out is a form too.
    assert_eq!(
        v.post_exactly("/console/logout", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(v.get("/console").await.status, StatusCode::OK);

    // The sign-in form has its own token, bound to a cookie.
    let mut stranger = Visitor::new(&app);
    let no_form = stranger
        .post_exactly("/console/login", &[("token", TOKEN), ("csrf", "x")])
        .await;
    assert_eq!(no_form.status, StatusCode::FORBIDDEN);
    assert!(!stranger.cookies.contains_key("aa_console"));

    // With the token, the same form works.
    let ok = v.post(&pause, &[]).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let (_, consent) = app.get(&format!("/api/v1/consents/{consent_id}")).await;
    assert_eq!(consent["status"], "paused");
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_address() {
    let app = TestApp::builder().start().await;
    let mut v = Visitor::new(&app);
    v.get("/console/login").await;
    for _ in 0..5 {
        let a = v.post("/console/login", &[("token", "guess")]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    // The sixth attempt in the minute is refused before the token is looked at: even the
    // right one.
    let limited = v.post("/console/login", &[("token", TOKEN)]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(limited.body.contains("TOO_MANY_SIGN_INS"));
    assert!(!v.cookies.contains_key("aa_console"));
}

/// A rejected and a duplicate webhook, as BankConnect (or someone) might send them.
async fn odd_webhooks(app: &TestApp) {
    let body = serde_json::to_vec(&json!({"event_name": "PULL_COMPLETED", "session_id": "s-dup"}))
        .unwrap();
    let signed = aa_recurring::webhook_auth::sign(
        aa_recurring::config::WebhookVerify::HmacSha256,
        aa_recurring::config::SANDBOX_WEBHOOK_SECRET,
        "msg-console-dup",
        chrono::Utc::now().timestamp(),
        &body,
    );
    for _ in 0..2 {
        let mut req = app
            .http
            .post(app.url("/webhooks/bankconnect"))
            .header("content-type", "application/json")
            .header("x-request-id", "req-console-dup")
            .body(body.clone());
        for (k, v) in &signed {
            req = req.header(*k, v);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::OK);
    }
    let rejected = app
        .http
        .post(app.url("/webhooks/bankconnect"))
        .header("content-type", "application/json")
        .header("x-webhook-signature", "sha256=00")
        .header(
            "x-webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .body(r#"{"secret":"do-not-show"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_page_answers_with_what_it_is_for() {
    let app = TestApp::builder().start().await;
    // An endpoint nobody answers at, so its deliveries are listed (and fail).
    let (status, endpoint) = app
        .post(
            "/api/v1/webhook-endpoints",
            &json!({"url": "http://127.0.0.1:9/hook", "description": "console"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{endpoint}");
    let consent_id = app.approved_consent("cust-console-pages", json!({})).await;
    let pull_id = app.pull(&consent_id).await;
    let pull = app.pull_reaches(&pull_id, "completed", 20).await;
    let dead_job = app.dead_capture_job("cust-console-dead").await;
    odd_webhooks(&app).await;

    let mut v = Visitor::signed_in(&app).await;
    // Duplicates and rejections are recorded after the answer, off the sender's path.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(v
        .page("/console/webhooks")
        .await
        .contains(r#"<span class="badge bad">rejected</span>"#)
        && v.page("/console/webhooks")
            .await
            .contains(r#"<span class="badge quiet">duplicate</span>"#))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "receipts never recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let overview = v.page("/console").await;
    assert!(overview.contains("<h1>Overview</h1>"));
    assert!(overview.contains("Consents by status"));
    let (_, active) = app.get("/api/v1/consents?status=active").await;
    let active = active["items"].as_array().unwrap().len();
    assert!(
        overview.contains(&format!(
            r#"<dt><a href="/console/consents?status=active">active</a></dt><dd>{active}</dd>"#
        )),
        "{overview}"
    );
    assert!(
        overview.contains(
            r#"<dt><a href="/console/pulls?status=completed">completed</a></dt><dd>1</dd>"#
        ),
        "{overview}"
    );
    assert!(overview.contains("Dead jobs"));
    assert!(overview.contains(r#"<h2 id="c-webhooks"><a href="/console/webhooks">Webhooks rejected, last hour</a></h2><p class="big">1</p>"#), "{overview}");
    assert!(overview.contains("Failed notifications"));
    assert!(overview.contains("<svg"));
    assert!(
        overview.contains("over the last 30 days: 1 in all"),
        "{overview}"
    );

    let consents = v.page("/console/consents").await;
    assert!(consents.contains(&consent_id));
    assert!(consents.contains("cust-console-pages"));
    assert!(consents.contains("1 of 5 this day"), "{consents}");
    let found = v.page("/console/consents?link_id=cust-console-pages").await;
    assert!(found.contains(&consent_id));
    let none = v.page("/console/consents?link_id=nobody").await;
    assert!(none.contains("No consent matches."));
    assert!(!none.contains(&consent_id));
    let paused_only = v.page("/console/consents?status=paused").await;
    assert!(!paused_only.contains(&consent_id));
    let bad = v.get("/console/consents?status=sleeping").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains("INVALID_STATUS"));

    let detail = v.page(&format!("/console/consents/{consent_id}")).await;
    for want in [
        "Schedule",
        "Fair use",
        "Sahamati",
        &pull_id,
        "consent.active",
        "pull.completed",
        ">Pause<",
        ">Start pull<",
    ] {
        assert!(detail.contains(want), "{want}: {detail}");
    }
    assert!(!detail.contains(">Resume<"));
    assert_eq!(
        v.get("/console/consents/no-such-consent").await.status,
        StatusCode::NOT_FOUND
    );

    let pulls = v.page("/console/pulls").await;
    assert!(pulls.contains(&pull_id));
    let of_consent = v
        .page(&format!(
            "/console/pulls?consent_id={consent_id}&status=completed"
        ))
        .await;
    assert!(of_consent.contains(&pull_id));
    assert!(
        !v.page("/console/pulls?status=failed")
            .await
            .contains(&pull_id)
    );
    let pull_page = v.page(&format!("/console/pulls/{pull_id}")).await;
    let session = pull["upstream_session_id"].as_str().unwrap();
    let kind = pull["kind"].as_str().unwrap();
    let stored = format!("Stored {kind}");
    for want in [session, "Queued", "Submitted", "Ended", "Attempts", &stored] {
        assert!(pull_page.contains(want), "{want}: {pull_page}");
    }
    assert!(
        !pull_page.contains("http-equiv=\"refresh\""),
        "an ended pull does not refresh"
    );
    let data = v.get(&format!("/console/pulls/{pull_id}/data")).await;
    assert_eq!(data.status, StatusCode::OK);
    let (_, api_data) = app.get(&format!("/api/v1/pulls/{pull_id}/{kind}")).await;
    assert_eq!(serde_json::from_str::<Value>(&data.body).unwrap(), api_data);

    let jobs = v.page("/console/jobs").await;
    assert!(jobs.contains(&format!(r#"id="job-{dead_job}""#)), "{jobs}");
    assert!(jobs.contains("capture_consents"));
    assert!(jobs.contains("401"), "the last error is shown");
    assert!(jobs.contains(">Retry<"));
    // Deliveries to the endpoint that does not answer fail and wait to try again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let retrying = v.page("/console/jobs?status=retrying").await;
        if retrying.contains("deliver_event") {
            assert!(
                !retrying.contains("capture_consents"),
                "a dead job is not retrying"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{retrying}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let webhooks = v.page("/console/webhooks").await;
    assert!(webhooks.contains("Accepted and stored"));
    assert!(webhooks.contains("PULL_COMPLETED") || webhooks.contains(session));
    assert!(
        webhooks.contains(r#"<span class="badge quiet">duplicate</span>"#),
        "{webhooks}"
    );
    assert!(webhooks.contains("req-console-dup"));
    assert!(webhooks.contains(r#"<span class="badge bad">rejected</span>"#));
    assert!(
        !webhooks.contains("do-not-show"),
        "a rejected body is never shown"
    );
    let only_rejected = v.page("/console/webhooks?outcome=rejected").await;
    assert!(!only_rejected.contains(r#"<span class="badge quiet">duplicate</span>"#));

    let notifications = v.page("/console/notifications").await;
    assert!(notifications.contains("http://127.0.0.1:9/hook"));
    assert!(notifications.contains(endpoint["endpoint_id"].as_str().unwrap()));
    assert!(notifications.contains(">Redeliver<"), "{notifications}");
    assert!(
        v.page("/console/notifications?status=failed")
            .await
            .contains("No deliveries.")
    );

    assert_eq!(
        v.get("/console/nowhere").await.status,
        StatusCode::NOT_FOUND
    );
    let css = v.get("/console/style.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    // No page may load a script or be framed.
    let csp = v.get("/console").await.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
}

#[tokio::test]
async fn console_actions_are_the_apis() {
    let app = TestApp::builder().start().await;
    let consent_id = app
        .approved_consent("cust-console-actions", json!({}))
        .await;
    let mut v = Visitor::signed_in(&app).await;
    let href = format!("/console/consents/{consent_id}");

    let paused = v.post(&format!("{href}/pause"), &[]).await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER);
    assert_eq!(paused.location(), format!("{href}?done=paused"));
    let (_, c) = app.get(&format!("/api/v1/consents/{consent_id}")).await;
    assert_eq!(c["status"], "paused");
    let page = v.page(&format!("{href}?done=paused")).await;
    assert!(page.contains("Paused. No pull is scheduled"));
    assert!(page.contains(">Resume<") && !page.contains(">Pause<"));

    // The API's rules: a paused consent takes no pull, and the page says why.
    let refused = v
        .post(&format!("{href}/pulls"), &[("kind", "insights")])
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.body.contains("CONSENT_NOT_ACTIVE"),
        "{}",
        refused.body
    );

    let resumed = v.post(&format!("{href}/resume"), &[]).await;
    assert_eq!(resumed.location(), format!("{href}?done=resumed"));
    let (_, c) = app.get(&format!("/api/v1/consents/{consent_id}")).await;
    assert_eq!(c["status"], "active");

    // Starting a pull twice with the page's idempotency key starts one.
    let started = v
        .post(
            &format!("{href}/pulls"),
            &[("kind", "insights"), ("idempotency_key", "k-1")],
        )
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let again = v
        .post(
            &format!("{href}/pulls"),
            &[("kind", "insights"), ("idempotency_key", "k-1")],
        )
        .await;
    assert_eq!(again.location(), started.location());
    let pull_id = started
        .location()
        .strip_prefix("/console/pulls/")
        .unwrap()
        .strip_suffix("?done=started")
        .unwrap()
        .to_string();
    let (_, pulls) = app
        .get(&format!("/api/v1/pulls?consent_id={consent_id}"))
        .await;
    assert_eq!(pulls["items"].as_array().unwrap().len(), 1, "{pulls}");
    app.pull_reaches(&pull_id, "completed", 20).await;

    // A dead job retried from the console is queued again, as the API's retry does.
    let job_id = app.dead_capture_job("cust-console-retry").await;
    let retried = v.post(&format!("/console/jobs/{job_id}/retry"), &[]).await;
    assert_eq!(retried.status, StatusCode::SEE_OTHER);
    assert_eq!(retried.location(), "/console/jobs?done=retried");
    let job = app
        .eventually(&format!("/api/v1/jobs/{job_id}"), 10, |j| {
            j["state"] == "done"
        })
        .await;
    assert_eq!(job["state"], "done");
    // Retrying it again is the API's 409.
    let twice = v.post(&format!("/console/jobs/{job_id}/retry"), &[]).await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert!(twice.body.contains("JOB_NOT_RETRYABLE"));

    // Redeliver: the API's, for an event that exists; 404 for one that does not.
    let (_, events) = app.get("/api/v1/events?limit=1").await;
    let event_id = events["items"][0]["id"].as_str().unwrap();
    let redelivered = v
        .post(&format!("/console/events/{event_id}/redeliver"), &[])
        .await;
    assert_eq!(
        redelivered.location(),
        "/console/notifications?done=redelivered"
    );
    assert_eq!(
        v.post("/console/events/evt_nope/redeliver", &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// The consent list (API and console) counts a page's usage in one query; it must agree with
/// counting consent by consent, for every consent and every window of its budget.
#[tokio::test]
async fn usage_for_a_whole_page_matches_counting_one_by_one() {
    use aa_recurring::domain::consent::{FrequencyUnit, UseCase};
    use aa_recurring::domain::fair_use::budget;
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    let day = chrono::Duration::days(1);
    let mut consents = vec![];
    for (i, (use_case, unit, value)) in [
        (UseCase::Monitoring, FrequencyUnit::Day, 5),
        (UseCase::Collections, FrequencyUnit::Hour, 2),
        (UseCase::Monitoring, FrequencyUnit::Month, 3),
        (UseCase::Monitoring, FrequencyUnit::Day, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let c = insert_consent(
            &store,
            &format!("c-usage-{i}"),
            use_case,
            unit,
            value,
            now - day * 40,
        )
        .await;
        consents.push(c);
    }
    // Ledger rows at different ages: this hour, yesterday, last month; none for the last.
    let limits: Vec<_> = consents.iter().map(|c| c.limits()).collect();
    for (i, c) in consents.iter().take(3).enumerate() {
        for (n, at) in [now, now - day, now - day * 35].into_iter().enumerate() {
            for _ in 0..=(i + n) % 3 {
                let far_budget = budget(&[], at);
                store
                    .reserve_attempt(&c.consent_id, &format!("p-{i}-{n}"), &far_budget, at)
                    .await
                    .unwrap()
                    .expect("an empty budget allows");
            }
        }
    }
    let budgets: Vec<(&str, Vec<_>)> = consents
        .iter()
        .zip(&limits)
        .map(|(c, l)| (c.consent_id.as_str(), budget(l, now)))
        .collect();
    let together = store.attempts_since_many(&budgets).await.unwrap();
    assert_eq!(together.len(), consents.len());
    for ((consent_id, b), used) in budgets.iter().zip(&together) {
        let alone = store.attempts_since(consent_id, b).await.unwrap();
        assert_eq!(&alone, used, "{consent_id}");
    }
    assert_eq!(together[3], vec![0, 0], "a consent with no pulls");
    assert!(together.iter().take(3).any(|u| u[0] > 0), "{together:?}");
    assert!(store.attempts_since_many(&[]).await.unwrap().is_empty());
}
