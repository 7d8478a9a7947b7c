//! Migrations change only what they intend: each dialect's migrated schema is compared with a
//! checked-in expectation (`schema/<dialect>.txt`). After an intended change, regenerate the
//! file with `BERTH_UPDATE_SCHEMA=1 ./dev test -E 'test(schema)'` and review its diff.

mod common;

use std::path::PathBuf;

use berth_control::meta::Meta;
use common::Db;

both!(migrated_schema_matches_the_expectation);

async fn migrated_schema_matches_the_expectation(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let (url, name) = match db {
        Db::Sqlite => (format!("sqlite://{}?mode=rwc", tmp.path().join("s.db").display()), "sqlite"),
        Db::Postgres => (common::pg_database().await, "postgres"),
    };
    let meta = Meta::open(&url, 2, Default::default()).await.unwrap();
    let n_migrations =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations").join(name)).unwrap().count();
    assert_eq!(meta.migrate().await.unwrap(), n_migrations, "a fresh store applies every migration");
    assert_eq!(meta.migrate().await.unwrap(), 0, "migrating twice changes nothing");
    let got = meta.schema().await.unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema").join(format!("{name}.txt"));
    if std::env::var_os("BERTH_UPDATE_SCHEMA").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        let diff: Vec<String> = diff_lines(&want, &got);
        panic!(
            "the migrated {name} schema differs from {}:\n{}\nIf the change is intended, regenerate with BERTH_UPDATE_SCHEMA=1.",
            path.display(),
            diff.join("\n")
        );
    }
}

fn diff_lines(want: &str, got: &str) -> Vec<String> {
    let w: std::collections::BTreeSet<_> = want.lines().collect();
    let g: std::collections::BTreeSet<_> = got.lines().collect();
    let mut out: Vec<String> = w.difference(&g).map(|l| format!("- {l}")).collect();
    out.extend(g.difference(&w).map(|l| format!("+ {l}")));
    out
}
