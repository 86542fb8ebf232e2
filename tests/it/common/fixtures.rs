//! What tests need besides the running service: the Postgres pass, fresh databases, and
//! consents or state made directly in the store.

/// True in the Postgres pass of a test binary (see [`postgres_pass`]).
pub fn on_postgres() -> bool {
    std::env::var("AA_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// A new, empty database for one test: a SQLite file in `dir`, or in the Postgres pass a new
/// database on the server that `TEST_POSTGRES_URL` names.
pub async fn fresh_database(dir: &std::path::Path) -> String {
    if !on_postgres() {
        return format!("sqlite://{}/test.db", dir.display());
    }
    let admin =
        std::env::var("TEST_POSTGRES_URL").expect("the Postgres pass needs TEST_POSTGRES_URL");
    fresh_postgres_database(&admin).await
}

/// A store on a new, empty database in `dir` (see [`fresh_database`]), not yet migrated.
pub async fn fresh_store(dir: &std::path::Path) -> aa_recurring::store::DynStore {
    aa_recurring::store::connect(&fresh_database(dir).await, &Default::default())
        .await
        .unwrap()
}

/// A new, empty database on the Postgres server `admin` connects to; returns its URL.
pub async fn fresh_postgres_database(admin: &str) -> String {
    let name = format!("aa_test_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(admin)
        .await
        .expect("TEST_POSTGRES_URL answers");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .expect("create a test database");
    pool.close().await;
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Runs every test of this binary again on Postgres, in a child process of the same binary,
/// when `TEST_POSTGRES_URL` is set; says loudly that it did not otherwise. Each binary has a
/// `postgres_pass` test that calls this, so `cargo test` covers both backends.
pub fn postgres_pass() {
    use std::io::Write;
    if on_postgres() {
        return;
    }
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** POSTGRES TESTS SKIPPED for {}: set TEST_POSTGRES_URL (e.g. postgres://postgres:postgres@127.0.0.1/postgres) to run them ***\n",
            std::env::current_exe()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
        );
        return;
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--skip", "postgres_pass"])
        .env("AA_TEST_BACKEND", "postgres")
        .env("TEST_POSTGRES_URL", url)
        .output()
        .expect("run the Postgres pass");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .filter(|l| l.starts_with("test result"))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(std::io::stderr(), "postgres pass: {summary}");
    assert!(
        out.status.success(),
        "the Postgres pass failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stores a consent directly (with its session), as a capture would: for tests that drive the
/// scheduler or the store without the HTTP journey.
pub async fn insert_consent(
    store: &aa_recurring::store::DynStore,
    consent_id: &str,
    use_case: aa_recurring::domain::consent::UseCase,
    unit: aa_recurring::domain::consent::FrequencyUnit,
    value: u32,
    approved_at: chrono::DateTime<chrono::Utc>,
) -> aa_recurring::domain::consent::Consent {
    use aa_recurring::domain::consent::{Consent, ConsentStatus, JourneyMode};
    use aa_recurring::domain::session::{NewSession, Session};
    let session_id = format!("session-{consent_id}");
    let new = NewSession {
        link_id: format!("link-{consent_id}"),
        use_case,
        journey_mode: JourneyMode::OnlyRecurring,
        tenure_months: 60,
        frequency_unit: unit,
        frequency_value: value,
        from_date: None,
        to_date: None,
        bank_name: None,
        mobile_number: None,
    };
    store
        .insert_session(&Session::started(session_id.clone(), &new, approved_at))
        .await
        .unwrap();
    let mut consent = Consent {
        consent_id: consent_id.to_string(),
        session_id: session_id.clone(),
        link_id: new.link_id.clone(),
        use_case,
        journey_mode: JourneyMode::OnlyRecurring,
        bank_name: None,
        masked_account_number: None,
        tenure_months: 60,
        frequency_unit: unit,
        frequency_value: value,
        status: ConsentStatus::Active,
        approved_at,
        expires_at: approved_at + chrono::Duration::days(1800),
        next_pull_at: None,
        pull_blocked_until: None,
        pull_interval_secs: None,
        created_at: approved_at,
        updated_at: approved_at,
    };
    consent.next_pull_at = Some(approved_at + consent.interval(None));
    store
        .complete_session(&session_id, std::slice::from_ref(&consent), approved_at)
        .await
        .unwrap();
    consent
}

/// Accepts an Insights pull of yesterday and today for `consent` directly in the store,
/// without a budget, as the API would.
pub async fn create_queued_pull(
    store: &aa_recurring::store::DynStore,
    consent: &aa_recurring::domain::consent::Consent,
    now: chrono::DateTime<chrono::Utc>,
) -> aa_recurring::domain::pull::Pull {
    use aa_recurring::store::CreatePull;
    let today = now.date_naive();
    let (mut new, job) = aa_recurring::pulls::plan(
        consent,
        aa_recurring::domain::pull::PullKind::Insights,
        (today - chrono::Duration::days(1), today),
        now,
        None,
        String::new(),
    );
    new.budget = vec![];
    let CreatePull::Created(pull) = store.create_pull(&new, &job).await.unwrap() else {
        panic!("the pull is accepted");
    };
    pull
}

/// Service state without an HTTP server, for driving the scheduler and jobs directly.
pub fn bare_state(
    store: aa_recurring::store::DynStore,
    clock: std::sync::Arc<dyn aa_recurring::clock::Clock>,
) -> aa_recurring::state::AppState {
    let config = aa_recurring::config::Config::from_lookup(|_| None).unwrap();
    aa_recurring::state::AppState::new(config, store, "http://127.0.0.1:9", clock).unwrap()
}
