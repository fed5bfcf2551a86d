//! What the database benchmarks share: a PostgreSQL to measure against.

use vantage::embedded_postgres::EmbeddedPostgres;
use vantage::storage;

/// The database `name` on `DATABASE_URL`'s server when it is set, otherwise on a
/// temporary cluster of our own (returned, so it lives as long as the caller keeps it).
/// The temporary cluster is switched to durable settings (fsync, synchronous_commit,
/// full_page_writes on) and PostgreSQL's default shared_buffers (128 MB) and
/// max_wal_size (1 GB) before measuring, so figures are neither flattered nor starved by
/// the test tuning. The schema is migrated.
pub async fn bench_database(name: &str) -> anyhow::Result<(Option<EmbeddedPostgres>, String)> {
    let (cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let mut url: url::Url = base.parse()?;
            url.set_path(&format!("/{name}_{}", std::process::id()));
            (None, url.to_string())
        }
        _ => {
            let pg = EmbeddedPostgres::start_temporary().await?;
            let admin = storage::connect(&pg.url("postgres")).await?;
            for sql in [
                "ALTER SYSTEM SET fsync = on",
                "ALTER SYSTEM SET synchronous_commit = on",
                "ALTER SYSTEM SET full_page_writes = on",
                // PostgreSQL's own defaults, not the test clusters' tiny ones.
                "ALTER SYSTEM SET shared_buffers = '128MB'",
                "ALTER SYSTEM SET max_wal_size = '1GB'",
            ] {
                sqlx::raw_sql(sql).execute(&admin).await?;
            }
            admin.close().await;
            // shared_buffers needs a restart.
            pg.stop().await?;
            pg.start().await?;
            let url = pg.url(name);
            (Some(pg), url)
        }
    };
    storage::ensure_database_exists(&url).await?;
    let pool = storage::connect(&url).await?;
    storage::migrate(&pool).await?;
    pool.close().await;
    Ok((cluster, url))
}
