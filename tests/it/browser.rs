//! The operator console in a real Chromium, driven through WebDriver (Debian's `chromium`
//! and `chromium-driver`; `.ci/run` installs them). Without them the test says loudly that it
//! was skipped, as the Postgres pass does. Screenshots of every page go to
//! `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(var: &str, default: &str) -> Option<String> {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_string());
    std::path::Path::new(&path).exists().then_some(path)
}

async fn start_browser() -> Option<(Driver, Client)> {
    let (Some(chromium), Some(chromedriver)) = (
        tool("CHROMIUM", CHROMIUM),
        tool("CHROMEDRIVER", CHROMEDRIVER),
    ) else {
        eprintln!(
            "\n*** BROWSER TESTS SKIPPED: install Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}; or set CHROMIUM and CHROMEDRIVER) to run them ***\n"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            // Headless, and quiet: this machine's network is closed, so nothing may phone home.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--no-first-run", "--window-size=1280,900",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ]
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&driver.url)
            .await
        {
            Ok(client) => return Some((driver, client)),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver did not start a session: {e}"),
        }
    }
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// An input found through its label's text, as a person (or a screen reader) finds it.
fn labelled(label: &str) -> Locator<'static> {
    Locator::XPath(Box::leak(
        format!("//input[@id=//label[normalize-space()='{label}']/@for]").into_boxed_str(),
    ))
}

fn button(text: &str) -> Locator<'static> {
    Locator::XPath(Box::leak(
        format!("//button[normalize-space()='{text}']").into_boxed_str(),
    ))
}

/// Clicks what `what` finds and waits for the page it leads to (the old page's root element
/// goes stale).
async fn click(c: &Client, what: Locator<'_>) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(what).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "the click led nowhere");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of the element `css` names, once the page shows it.
async fn text_of(c: &Client, css: &str) -> String {
    match c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e.text().await.unwrap(),
        Err(e) => panic!(
            "no {css} at {}: {e}\n{}",
            c.current_url().await.unwrap(),
            c.source().await.unwrap()
        ),
    }
}

async fn heading(c: &Client) -> String {
    text_of(c, "h1").await
}

#[tokio::test]
async fn an_operator_signs_in_finds_a_consent_steers_it_and_signs_out_in_chromium() {
    if on_postgres() {
        // The pages' reads run on both backends in `console.rs`; one browser pass is enough.
        return;
    }
    let Some((_driver, c)) = start_browser().await else {
        return;
    };
    let app = TestApp::builder().start().await;
    let consent_id = app.approved_consent("cust-browser", json!({})).await;
    let job_id = app.dead_capture_job("cust-browser-dead").await;

    // Signed out, the console sends the browser to sign in.
    c.goto(&app.url("/console")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/console/login");
    shot(&c, "01-sign-in").await;

    // A wrong token, then the right one.
    c.find(labelled("API token"))
        .await
        .unwrap()
        .send_keys("not-a-token")
        .await
        .unwrap();
    click(&c, button("Sign in")).await;
    assert_eq!(
        text_of(&c, "[role=alert]").await,
        "That token is not one of this service's API tokens."
    );
    c.find(labelled("API token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&c, button("Sign in")).await;
    assert_eq!(heading(&c).await, "Overview");
    shot(&c, "02-overview").await;

    // Find the consent by its link id.
    click(&c, Locator::LinkText("Consents")).await;
    c.find(labelled("Link id"))
        .await
        .unwrap()
        .send_keys("cust-browser")
        .await
        .unwrap();
    click(&c, button("Search")).await;
    shot(&c, "03-consents").await;
    let rows = c.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);
    click(&c, Locator::LinkText(&consent_id)).await;
    assert!(heading(&c).await.contains(&consent_id));
    shot(&c, "04-consent").await;

    // Pause, and the API agrees; then resume.
    click(&c, button("Pause")).await;
    assert!(text_of(&c, "[role=status]").await.starts_with("Paused."));
    let (_, api) = app.get(&format!("/api/v1/consents/{consent_id}")).await;
    assert_eq!(api["status"], "paused");
    click(&c, button("Resume")).await;
    assert!(text_of(&c, "[role=status]").await.starts_with("Resumed."));
    let (_, api) = app.get(&format!("/api/v1/consents/{consent_id}")).await;
    assert_eq!(api["status"], "active");

    // A form whose CSRF token is gone is refused, and nothing changes.
    c.execute(
        "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())",
        vec![],
    )
    .await
    .unwrap();
    click(&c, button("Pause")).await;
    assert!(text_of(&c, "[role=alert]").await.contains("FORBIDDEN"));
    let (_, api) = app.get(&format!("/api/v1/consents/{consent_id}")).await;
    assert_eq!(api["status"], "active");
    c.back().await.unwrap();
    c.refresh().await.unwrap();

    // Start a pull and watch it complete: its page refreshes itself until it ends.
    click(&c, button("Start pull")).await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/console/pulls/")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c
            .find(Locator::Css("#pull-status"))
            .await
            .ok()
            .map(|e| async move { e.text().await.unwrap_or_default() });
        let status = match status {
            Some(s) => s.await,
            None => String::new(),
        };
        if status == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pull did not complete: {status}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shot(&c, "05-pull").await;
    let pull_id = c
        .current_url()
        .await
        .unwrap()
        .path()
        .trim_start_matches("/console/pulls/")
        .to_string();
    let (_, api) = app.get(&format!("/api/v1/pulls/{pull_id}")).await;
    assert_eq!(api["status"], "completed");
    c.goto(&app.url("/console/pulls")).await.unwrap();
    shot(&c, "06-pulls").await;

    // Retry the dead job.
    c.goto(&app.url("/console/jobs")).await.unwrap();
    shot(&c, "07-jobs").await;
    click(&c, Locator::Css(&format!("#job-{job_id} button"))).await;
    assert_eq!(text_of(&c, "[role=status]").await, "Job queued to run now.");
    let job = app
        .eventually(&format!("/api/v1/jobs/{job_id}"), 10, |j| {
            j["state"] == "done"
        })
        .await;
    assert_eq!(job["state"], "done");

    c.goto(&app.url("/console/webhooks")).await.unwrap();
    assert_eq!(heading(&c).await, "Webhooks from BankConnect");
    shot(&c, "08-webhooks").await;
    c.goto(&app.url("/console/notifications")).await.unwrap();
    assert_eq!(heading(&c).await, "Notifications to the lender");
    shot(&c, "09-notifications").await;

    // On a phone.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&app.url(&format!("/console/consents/{consent_id}")))
        .await
        .unwrap();
    shot(&c, "10-consent-phone").await;
    c.goto(&app.url("/console")).await.unwrap();
    shot(&c, "11-overview-phone").await;
    c.set_window_size(1280, 900).await.unwrap();

    // Sign out: back to the sign-in page, and the console is closed again.
    click(&c, button("Sign out")).await;
    assert_eq!(c.current_url().await.unwrap().path(), "/console/login");
    assert_eq!(text_of(&c, "[role=status]").await, "You are signed out.");
    c.goto(&app.url("/console/jobs")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/console/login");

    c.close().await.unwrap();
}
