//! A database the walking skeleton wrote (schema 0001 + 0002 through sqlx's `Any`
//! driver: hex TEXT digests and keys, TEXT JSON, BIGINT flags) is migrated in place by
//! the native engines on first start, on SQLite and PostgreSQL: every key, token,
//! record, rejection and the audit chain still work afterwards.

use crate::harness::{postgres_admin_url, unique, Db};
use datarun_domain::{DepartmentId, PurposeCode, RecordType, ResidentId, Role};
use datarun_store::{
    ConsentGrant, IngestItem, IngestOutcome, LookupAsk, LookupOutcome, MessageSource,
    RejectionFilter, StoredRecord, Verdict,
};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;

/// The skeleton's two migrations, byte for byte as it embedded them.
#[derive(Debug)]
struct SkeletonMigrations;

impl<'s> MigrationSource<'s> for SkeletonMigrations {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let migration = |version, description, sql| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        };
        Box::pin(async move {
            Ok(vec![
                migration(
                    1,
                    "initial",
                    include_str!("../../crates/datarun-store/migrations/0001_initial.sql"),
                ),
                migration(
                    2,
                    "ingest trust",
                    include_str!("../../crates/datarun-store/migrations/0002_ingest_trust.sql"),
                ),
            ])
        })
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

const SUBJECT: &str = "440303201506303948";
const TOKEN: &str = "drt_skeleton-era-token";
const PUBLIC_KEY: [u8; 32] = [7; 32];

/// What the skeleton would have stored: a department, a key, a birth certificate, a
/// caseworker with a token, a purpose and a dead-lettered rejection.
const SKELETON_ROWS: &[&str] = &[
    "INSERT INTO departments VALUES ('health', 'Health Commission', 1)",
    "INSERT INTO signing_keys VALUES ('health-2026', 'health', 'ed25519', \
     '0707070707070707070707070707070707070707070707070707070707070707', 0, NULL, NULL, 1)",
    "INSERT INTO purposes VALUES ('household_registration', 'Household registration', 1)",
    "INSERT INTO record_schemas VALUES ('health.birth_certificate', 1, \
     '{\"type\": \"record\", \"name\": \"BirthCertificate\", \"fields\": [\
     {\"name\": \"child_name\", \"type\": \"string\", \"datarun.sensitivity\": \"personal\"}, \
     {\"name\": \"weight_grams\", \"type\": \"int\", \"datarun.sensitivity\": \"health\"}]}', 1)",
    "INSERT INTO records VALUES ('health-r1', 'CERT-1', 'health.birth_certificate', 1, 'health', \
     '440303201506303948', 1000, 'health-2026', \
     'abababababababababababababababababababababababababababababababab', 'cdcd', \
     '{\"child_name\":\"Li Xiaoming\",\"weight_grams\":3250}', 2000)",
    "INSERT INTO certificates VALUES ('CERT-1', 'health.birth_certificate', 'health', \
     '440303201506303948', 'health-r1', 1000, 2000)",
    "INSERT INTO certificate_guardians VALUES ('CERT-1', '440104198503125841', '440303201506303948')",
    "INSERT INTO certificate_guardians VALUES ('CERT-1', '44010519870402262X', '440303201506303948')",
    "INSERT INTO actors VALUES ('caseworker_1', 'caseworker', 'health', NULL, 'Wang', 1)",
    "INSERT INTO consents VALUES ('consent_5ce1e7000000000000000000000000aa', '440303201506303948', '440303201506303948', \
     'health', NULL, 'health.birth_certificate', NULL, 'household_registration', 5, 0, 'active', \
     4102444800000, 1500, NULL)",
    "INSERT INTO ingest_rejections VALUES ('records.health.birth_certificate', 0, 41, \
     '0101010101010101010101010101010101010101010101010101010101010101', 'signature_invalid', \
     'datarun-signature', 'bad', 'health-r9', 'health', 'health.birth_certificate', 1, 3000, 0, 3001, 'intact')",
];

async fn skeleton_database_migrates(db: Db) {
    let name = unique("datarun_upgrade");
    let url = match db {
        Db::Sqlite => {
            let dir = std::env::temp_dir().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            format!("sqlite://{}", dir.join("datarun.db").display())
        }
        Db::Postgres => {
            let admin = postgres_admin_url();
            datarun_store::Store::create_postgres_database(&admin, &name)
                .await
                .unwrap();
            format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
        }
    };
    let token_hash = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        TOKEN.as_bytes(),
    ));
    let token_row = format!("INSERT INTO tokens VALUES ('{token_hash}', 'caseworker_1', 1, NULL)");
    let migrator = Migrator::new(SkeletonMigrations).await.unwrap();
    match db {
        Db::Sqlite => {
            let options = url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            for sql in SKELETON_ROWS.iter().copied().chain([token_row.as_str()]) {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            for sql in SKELETON_ROWS.iter().copied().chain([token_row.as_str()]) {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
    }

    let store = datarun_store::Store::connect(&url, vec![5; 32])
        .await
        .unwrap();
    // Schema versions from before the registry get their global ids, once.
    assert_eq!(
        store
            .assign_schema_ids(datarun_schema::fingerprint)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .assign_schema_ids(datarun_schema::fingerprint)
            .await
            .unwrap(),
        0
    );
    let versions = store
        .schema_versions("health.birth_certificate", false)
        .await
        .unwrap();
    assert_eq!(
        (versions.len(), versions[0].version, versions[0].schema_id),
        (1, 1, 1)
    );
    assert!(store.schema_by_id(1).await.unwrap().is_some());
    // The guardian the certificate names is still its subject's guardian (migration 0015).
    assert!(store
        .is_guardian_of("440104198503125841", "440303201506303948")
        .await
        .unwrap());
    assert_eq!(
        store.wards_of("440104198503125841").await.unwrap(),
        vec!["440303201506303948".to_owned()]
    );
    assert!(!store
        .is_guardian_of("440303201506303948", "440104198503125841")
        .await
        .unwrap());
    // A check character X survives SQLite's guardian numbers (migration 0019); the
    // same id with a lower-case x names no one, on either engine.
    assert_eq!(
        store.wards_of("44010519870402262X").await.unwrap(),
        vec!["440303201506303948".to_owned()]
    );
    assert!(store
        .is_guardian_of("44010519870402262X", "440303201506303948")
        .await
        .unwrap());
    assert!(store
        .wards_of("44010519870402262x")
        .await
        .unwrap()
        .is_empty());
    // Keys, tokens and rejections read back in their new types.
    let key = store.trusted_key("health-2026").await.unwrap().unwrap();
    assert_eq!(key.public_key, PUBLIC_KEY);
    let datarun_store::Authentication::Valid(caseworker) = store.authenticate(TOKEN).await.unwrap()
    else {
        panic!("a token from before the upgrade still authenticates");
    };
    assert_eq!(caseworker.role, Role::Caseworker);
    let rejections = store
        .rejections(&RejectionFilter {
            limit: 10,
            ..RejectionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rejections.len(), 1);
    assert!(rejections[0].verified);
    assert_eq!(rejections[0].dead_letter_form.as_deref(), Some("intact"));
    // The stored digest is the same bytes: a redelivery of the old record is a duplicate.
    let redelivered = IngestItem {
        source: MessageSource {
            topic: "records.health.birth_certificate".into(),
            partition: 0,
            offset: 40,
            message_digest: "02".repeat(32),
        },
        verdict: Verdict::Accept(StoredRecord {
            record_id: "health-r1".into(),
            certificate_id: "CERT-1".into(),
            record_type: "health.birth_certificate".into(),
            schema_version: 1,
            department: "health".into(),
            subject: SUBJECT.into(),
            signed_at: 1000,
            signing_key_id: "health-2026".into(),
            content_digest: [0xab; 32],
            signature: vec![0xcd, 0xcd],
            fields_json: "{}".into(),
            guardians: Vec::new(),
            status: "VALID".into(),
            superseded_by: None,
        }),
    };
    assert_eq!(
        store.store_batch(&[redelivered]).await.unwrap(),
        vec![IngestOutcome::Duplicate]
    );
    // The skeleton's purposes have no catalogue entry: `datarun up` registers the
    // catalogue on every start, as here.
    let birth = RecordType::parse("health.birth_certificate").unwrap();
    let purpose = PurposeCode::parse("household_registration").unwrap();
    store
        .register_purpose(
            "operator",
            &datarun_domain::Purpose {
                code: purpose.clone(),
                title_zh: "新生儿入户".into(),
                title_en: "Registering a newborn".into(),
                legal_basis: "户口登记条例 第七条".into(),
                whose: Default::default(),
                needs: std::collections::BTreeMap::from([(
                    birth.clone(),
                    vec!["child_name".into(), "weight_grams".into()],
                )]),
            },
        )
        .await
        .unwrap();
    // A consented lookup releases the old record's fields, and is audited on the chain.
    let subject = ResidentId::parse(SUBJECT).unwrap();
    let (citizen, _) = store
        .create_actor(
            Role::Citizen,
            None,
            Some(&subject),
            "Li",
            std::time::Duration::from_secs(3_600),
        )
        .await
        .unwrap();
    let consent = store
        .grant_consent(
            &citizen,
            ConsentGrant {
                subject: subject.clone(),
                requester_department: DepartmentId::parse("health").unwrap(),
                caseworker: None,
                record_types: vec![RecordType::parse("health.birth_certificate").unwrap()],
                fields: None,
                purpose: PurposeCode::parse("household_registration").unwrap(),
                max_uses: 1,
                expires_at_millis: datarun_store::now_millis() + 3_600_000,
            },
        )
        .await
        .unwrap();
    let outcome = store
        .lookup(
            &caseworker,
            LookupAsk {
                consent_id: consent.consent_id.clone(),
                subject: SUBJECT.into(),
                record_types: vec![birth.clone()],
                purpose: purpose.clone(),
                fields: None,
            },
        )
        .await
        .unwrap();
    let LookupOutcome::Allowed { certificates, .. } = outcome else {
        panic!("lookup refused: {outcome:?}");
    };
    assert_eq!(certificates.len(), 1);
    assert_eq!(certificates[0].fields["child_name"], "Li Xiaoming");
    // The skeleton's `health` tag reads as sensitive: not released unless named.
    assert!(
        !certificates[0].fields.contains_key("weight_grams"),
        "{:?}",
        certificates[0].fields
    );
    // A skeleton-era consent recorded no schema version: it reads as granted against
    // the version registered by its grant time, and releases by that version's tags.
    let outcome = store
        .lookup(
            &caseworker,
            LookupAsk {
                consent_id: "consent_5ce1e7000000000000000000000000aa".to_owned(),
                subject: SUBJECT.into(),
                record_types: vec![birth.clone()],
                purpose: purpose.clone(),
                fields: None,
            },
        )
        .await
        .unwrap();
    let LookupOutcome::Allowed { certificates, .. } = outcome else {
        panic!("lookup under the skeleton's consent refused: {outcome:?}");
    };
    assert_eq!(
        certificates[0].fields.keys().collect::<Vec<_>>(),
        vec!["child_name"]
    );
    assert_eq!(store.verify_audit_chain().await.unwrap(), Ok(4));
    store.close().await;
    // A second start finds nothing left to migrate.
    let again = datarun_store::Store::connect(&url, vec![5; 32])
        .await
        .unwrap();
    assert_eq!(again.record_counts().await.unwrap(), (1, 1));
    again.close().await;
    // The tables are the engine's own now.
    match db {
        Db::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let loose: Vec<(String,)> = sqlx::query_as(
                "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table'
                 AND strict = 0 AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(loose.is_empty(), "tables not STRICT: {loose:?}");
            let (foreign_keys, without_rowid): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM pragma_foreign_key_list('certificates')),
                        (SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = 'certificates')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(
                (foreign_keys, without_rowid),
                (0, 1),
                "certificates: no foreign key to records since 0016, still WITHOUT ROWID"
            );
            let wrong = sqlx::query("UPDATE records SET signed_at = 'yesterday'")
                .execute(&pool)
                .await;
            assert!(
                wrong.is_err(),
                "a STRICT table refuses text in an INTEGER column"
            );
            // A database keeps the page size it was made with: the skeleton's 4 KiB.
            // A new one gets the hub's, as in the same directory after it is removed.
            let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(page_size, 4096, "the skeleton database keeps its pages");
            pool.close().await;
            let path = url.trim_start_matches("sqlite://");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            let fresh = datarun_store::Store::connect(&url, vec![5; 32])
                .await
                .unwrap();
            fresh.close().await;
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(page_size, i64::from(datarun_store::SQLITE_PAGE_BYTES));
        }
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let types: Vec<(String, String)> = sqlx::query_as(
                "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_name = 'records' AND column_name IN ('content_digest', 'signature', 'fields')
                 ORDER BY column_name",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let expected = [
                ("content_digest", "bytea"),
                ("fields", "json"),
                ("signature", "bytea"),
            ];
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .collect();
            assert_eq!(types, expected);
            // Without a foreign key there, a guardian of no stored version is found.
            sqlx::query(
                "INSERT INTO certificate_guardians (guardian_id, feed_seq) VALUES ('g', 987654321)",
            )
            .execute(&pool)
            .await
            .unwrap();
            let store = datarun_store::Store::connect(&url, vec![5; 32])
                .await
                .unwrap();
            assert_eq!(store.dangling_references().await.unwrap(), 1);
        }
    }
}

#[tokio::test]
async fn skeleton_database_migrates_sqlite() {
    skeleton_database_migrates(Db::Sqlite).await;
}

#[tokio::test]
async fn skeleton_database_migrates_postgres() {
    skeleton_database_migrates(Db::Postgres).await;
}
