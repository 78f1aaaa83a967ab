//! `datarun bench lookup`: consented lookups over the real HTTP API, with the cost of
//! each layer beside it in the same run.
//!
//! A fresh store is loaded with `certificates` birth certificates through the ingest
//! store path (the same batch transactions as ingest; no broker, no signing, which
//! `bench ingest` measures). Then, on the same rows and the same pool:
//! 1. a bare primary-key read of a certificate's current version (the floor);
//! 2. the consented lookup at the store (consent check, use count, read, release
//!    policy, audit event: one group-committed transaction);
//! 3. the lookup over HTTP as a caseworker makes it: bearer token, JSON, quota, the
//!    store lookup, the signed response; `concurrency` clients as fast as they go;
//! 4. the same at half that rate, open loop (requests sent on a schedule, latency
//!    measured from the scheduled time, so a stall is not hidden).
//!
//! Every lookup uses its own one-use consent, granted before the clock starts.

use crate::app;
use crate::bench::{fresh_hub, rate, Backend, Broker};
use datarun_domain::{PurposeCode, RecordType, ResidentId, Role};
use datarun_store::{
    ConsentGrant, IngestItem, LookupAsk, LookupOutcome, MessageSource, StoredRecord, Verdict,
};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Certificates stored per transaction while loading.
const LOAD_BATCH: usize = 4_000;

/// The `index`-th synthetic child: a valid resident ID number, unique up to 10 million.
fn child_id(index: usize) -> String {
    let born = datarun_domain::date::CivilDate::from_days_since_epoch(
        // From 2010-01-01, 999 children a day.
        14_610 + (index / 999) as i64,
    );
    let body = format!(
        "440104{:04}{:02}{:02}{:03}",
        born.year,
        born.month,
        born.day,
        index % 999 + 1
    );
    format!("{body}{}", ResidentId::check_character(&body))
}

fn certificate(index: usize) -> StoredRecord {
    let child = child_id(index);
    let fields = serde_json::json!({
        "certificate_id": format!("M44{index:09}"),
        "child_name": format!("李{}", index % 9_973),
        "child_sex": if index & 1 == 0 { "MALE" } else { "FEMALE" },
        "child_id_number": child,
        "date_of_birth": "2015-06-30",
        "place_of_birth": "广东省广州市越秀区",
        "birth_weight_grams": 3_200 + (index % 700) as i64,
        "institution": "广州市妇女儿童医疗中心",
        "mother_name": "王芳",
        "mother_id_number": "440104198503125841",
        "father_name": "李伟",
        "father_id_number": null,
        "issue_date": "2015-07-02",
        "status": "VALID",
        "status_reason": null,
        "superseded_by": null,
    });
    StoredRecord {
        record_id: format!("health-bench-{index}"),
        certificate_id: format!("M44{index:09}"),
        record_type: "health.birth_certificate".into(),
        schema_version: 2,
        department: "health".into(),
        subject: child,
        signed_at: 1_700_000_000_000 + index as i64,
        signing_key_id: "health-2026".into(),
        content_digest: [(index % 251) as u8; 32],
        signature: vec![0; 64],
        fields_json: fields.to_string(),
        guardians: vec!["440104198503125841".into()],
        status: "VALID".into(),
        superseded_by: None,
    }
}

/// p50, p99 and max of `latencies` (sorted here).
fn percentiles(latencies: &mut [Duration]) -> (Duration, Duration, Duration) {
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (at(0.5), at(0.99), latencies[latencies.len() - 1])
}

fn report(
    out: &mut dyn Write,
    what: &str,
    count: usize,
    elapsed: Duration,
    latencies: &mut [Duration],
) -> anyhow::Result<f64> {
    let (p50, p99, max) = percentiles(latencies);
    writeln!(
        out,
        "  {what:<44} {}  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
        rate(count, elapsed),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
    )?;
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Runs `work` for each item of `items` on `concurrency` tasks; the latency of each and
/// the time for all.
async fn run_all<T, F, Fut>(
    items: Vec<T>,
    concurrency: usize,
    work: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let queue = Arc::new(tokio::sync::Mutex::new(items));
    let work = Arc::new(work);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (queue, work) = (queue.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(item) = queue.lock().await.pop() else {
                    break;
                };
                let began = Instant::now();
                work(item).await?;
                latencies.push(began.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((started.elapsed(), latencies))
}

pub async fn lookups(
    backend: Backend,
    certificates: usize,
    lookups: usize,
    concurrency: usize,
    postgres_admin_url: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        certificates >= lookups && lookups >= 100 && concurrency >= 1 && certificates <= 5_000_000,
        "at least 100 lookups, no more than the certificates stored (at most 5,000,000), one client or more"
    );
    let mut hub = fresh_hub(backend, Broker::Mock, postgres_admin_url, 0).await?;
    // Production's limits would stop a benchmark: they are not what is measured.
    hub.config.lookups.caseworker_per_minute = u32::MAX / 2;
    hub.config.lookups.purpose_per_minute = u32::MAX / 2;
    hub.config.lookups.harvest_distinct_subjects = u32::MAX / 2;
    let store = hub.store.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    // As a running hub does: the checkpointer and the token-revocation watch.
    let background = {
        let (checkpoints, auth) = (store.clone(), store.clone());
        let (a, b) = (until_stopped(), until_stopped());
        tokio::spawn(async move {
            tokio::join!(
                checkpoints.run_checkpoints(datarun_store::CHECKPOINT_EVERY, a),
                auth.run_auth_watch(datarun_store::AUTH_POLL_EVERY, b),
            );
        })
    };

    // Load the certificates through the ingest store path.
    let started = Instant::now();
    for (batch_index, first) in (0..certificates).step_by(LOAD_BATCH).enumerate() {
        let items: Vec<IngestItem> = (first..(first + LOAD_BATCH).min(certificates))
            .map(|index| IngestItem {
                source: MessageSource {
                    topic: "bench".into(),
                    partition: 0,
                    offset: index as i64,
                    message_digest: format!("{index:064x}"),
                },
                verdict: Verdict::Accept(certificate(index)),
            })
            .collect();
        store.store_batch(&items).await?;
        if batch_index % 25 == 24 {
            eprintln!("  loaded {} certificates", first + items.len());
        }
    }
    let loaded = started.elapsed();
    // As autovacuum would soon after a bulk load.
    store.refresh_statistics().await?;

    // One caseworker per client; one citizen per child; a one-use consent per lookup
    // of each of the three lookup phases.
    let department = datarun_domain::DepartmentId::parse("public_security")?;
    let day = Duration::from_secs(86_400);
    let mut caseworkers = Vec::new();
    for client in 0..concurrency {
        let (actor, token) = store
            .create_actor(
                Role::Caseworker,
                Some(&department),
                None,
                &format!("bench counter {client}"),
                day,
            )
            .await?;
        caseworkers.push((actor, token));
    }
    let record_type = RecordType::parse("health.birth_certificate")?;
    let purpose = PurposeCode::parse("household_registration")?;
    let half = lookups / 2;
    let mut at_store = Vec::with_capacity(lookups);
    let mut over_http = Vec::with_capacity(lookups);
    let mut at_half_rate = Vec::with_capacity(half);
    let granting = Instant::now();
    // Spread over the whole table, so the reads touch pages all over it.
    let stride = certificates / lookups;
    for n in 0..lookups {
        let index = n * stride;
        let child = ResidentId::parse(&child_id(index))?;
        let (citizen, _) = store
            .create_actor(Role::Citizen, None, Some(&child), "bench citizen", day)
            .await?;
        let phases = if n < half { 3 } else { 2 };
        for phase in 0..phases {
            let consent = store
                .grant_consent(
                    &citizen,
                    ConsentGrant {
                        subject: child.clone(),
                        requester_department: department.clone(),
                        caseworker: None,
                        record_types: vec![record_type.clone()],
                        fields: None,
                        purpose: purpose.clone(),
                        max_uses: 1,
                        expires_at_millis: datarun_store::now_millis() + 3_600_000,
                    },
                )
                .await?;
            let entry = (consent.consent_id, child.as_str().to_owned(), index);
            match phase {
                0 => at_store.push(entry),
                1 => over_http.push(entry),
                _ => at_half_rate.push(entry),
            }
        }
    }
    let granted = granting.elapsed();

    writeln!(
        out,
        "lookup benchmark ({backend:?}, {certificates} certificates, {lookups} lookups per phase, {concurrency} clients)"
    )?;
    writeln!(
        out,
        "  loaded {certificates} certificates in {loaded:.2?} ({}); {} consents granted in {granted:.2?}",
        rate(certificates, loaded),
        lookups * 2 + half
    )?;

    // 1. The floor: a primary-key read of the same rows through the same pool.
    let reads: Vec<usize> = at_store.iter().map(|(_, _, index)| *index).collect();
    let reader = store.clone();
    let (elapsed, mut latencies) = run_all(reads, concurrency, move |index| {
        let store = reader.clone();
        async move {
            let found = store.current_version(&format!("M44{index:09}")).await?;
            anyhow::ensure!(found.is_some(), "a benchmark certificate is missing");
            Ok(())
        }
    })
    .await?;
    report(
        out,
        "primary-key read (same rows, same pool)",
        lookups,
        elapsed,
        &mut latencies,
    )?;

    // 2. The consented lookup at the store.
    let caseworker = caseworkers[0].0.clone();
    let (looker, asked) = (store.clone(), (record_type.clone(), purpose.clone()));
    let (elapsed, mut latencies) =
        run_all(at_store, concurrency, move |(consent_id, subject, _)| {
            let (store, caseworker, (record_type, purpose)) =
                (looker.clone(), caseworker.clone(), asked.clone());
            async move {
                let outcome = store
                    .lookup(
                        &caseworker,
                        LookupAsk {
                            consent_id,
                            subject,
                            record_types: vec![record_type],
                            purpose,
                            fields: None,
                        },
                    )
                    .await?;
                anyhow::ensure!(
                    matches!(outcome, LookupOutcome::Allowed { .. }),
                    "a benchmark lookup was refused"
                );
                Ok(())
            }
        })
        .await?;
    report(
        out,
        "consented lookup at the store",
        lookups,
        elapsed,
        &mut latencies,
    )?;

    // 3. Over HTTP, as fast as the clients go.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = datarun_api::ApiState {
        store: store.clone(),
        metrics: Arc::new(String::new),
        records_topic_prefix: hub.config.kafka_settings().records_topic(""),
        signer: Arc::new(app::hub_signer(&hub.config)?),
        quotas: Arc::new(datarun_api::quotas::Quotas::new(
            hub.config.quota_settings(),
        )),
    };
    store
        .register_hub_key(state.signer.key_id(), state.signer.public_key())
        .await?;
    let server = tokio::spawn(datarun_api::serve(listener, state, until_stopped()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let tokens: Arc<Vec<String>> = Arc::new(caseworkers.iter().map(|(_, t)| t.clone()).collect());
    let next_client = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let send = {
        let (http, base, tokens, next_client) = (
            http.clone(),
            base.clone(),
            tokens.clone(),
            next_client.clone(),
        );
        move |(consent_id, subject, _): (String, String, usize)| {
            let (http, base, tokens) = (http.clone(), base.clone(), tokens.clone());
            let client =
                next_client.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % tokens.len();
            async move {
                let response = http
                    .post(format!("{base}/v1/lookups"))
                    .bearer_auth(&tokens[client])
                    .json(&serde_json::json!({
                        "consent_id": consent_id,
                        "subject": subject,
                        "record_type": "health.birth_certificate",
                        "purpose": "household_registration",
                    }))
                    .send()
                    .await?;
                let status = response.status();
                let body = response.bytes().await?;
                anyhow::ensure!(
                    status.is_success() && body.windows(13).any(|w| w == b"hub_signature"),
                    "a benchmark lookup over HTTP failed: {status}"
                );
                Ok(())
            }
        }
    };
    let (elapsed, mut latencies) = run_all(over_http, concurrency, send.clone()).await?;
    let http_rate = report(
        out,
        "consented, audited, signed lookup over HTTP",
        lookups,
        elapsed,
        &mut latencies,
    )?;

    // 4. Open loop at half that rate: each request leaves at its scheduled time.
    let interval = Duration::from_secs_f64(2.0 / http_rate);
    let started = Instant::now();
    let mut inflight = Vec::with_capacity(half);
    for (n, item) in at_half_rate.into_iter().enumerate() {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let send = send.clone();
        inflight.push(tokio::spawn(async move {
            send(item).await?;
            Ok::<_, anyhow::Error>(due.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(half);
    for task in inflight {
        latencies.push(task.await??);
    }
    let elapsed = started.elapsed();
    report(
        out,
        &format!(
            "the same at half that rate ({:.0}/s, open loop)",
            http_rate / 2.0
        ),
        half,
        elapsed,
        &mut latencies,
    )?;

    let _ = stop.send(true);
    server.await??;
    background.await?;
    match store.verify_audit_chain().await? {
        Ok(events) => writeln!(out, "  audit chain intact after the run: {events} events")?,
        Err(chain_break) => anyhow::bail!("audit chain broken after the benchmark: {chain_break}"),
    }
    hub.remove().await
}
