//! Quick operations on monitors by name: `vantage monitors list` with each
//! monitor's latest status per datacenter, and `pause` / `resume`. They change only
//! `enabled`, so a managed monitor stays managed (the next `apply` of its files sets
//! `enabled` back to what the file says, and `diff` shows it).

use std::collections::BTreeMap;

use sqlx::PgPool;

/// One monitor and its latest status in each datacenter it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorStatus {
    pub name: String,
    pub kind: String,
    pub target: String,
    pub enabled: bool,
    /// Datacenter code -> latest heartbeat status (None: no heartbeat yet).
    pub statuses: BTreeMap<String, Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuickError {
    #[error("no monitor named {}", .0.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "))]
    Unknown(Vec<String>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// name, kind, url, enabled, datacenter code, latest status.
type ListRow = (String, String, String, bool, Option<String>, Option<String>);

/// Monitors (with `tag`, running in `datacenter` when given), sorted by name.
pub async fn list(
    pool: &PgPool,
    tag: Option<&str>,
    datacenter: Option<&str>,
) -> Result<Vec<MonitorStatus>, sqlx::Error> {
    let rows: Vec<ListRow> = sqlx::query_as(
        "SELECT m.name, m.kind, m.url, m.enabled, d.code, hb.status \
         FROM api_monitors m \
         LEFT JOIN monitor_assignments a ON a.monitor_id = m.id \
         LEFT JOIN datacenters d ON d.id = a.datacenter_id \
         LEFT JOIN LATERAL (SELECT h.status FROM api_heartbeats h \
                            WHERE h.monitor_id = m.id AND h.datacenter_id = d.id \
                            ORDER BY h.scheduled_at DESC LIMIT 1) hb ON true \
         WHERE ($1::text IS NULL OR $1 = ANY (m.tags)) \
           AND ($2::text IS NULL OR d.code = $2) \
         ORDER BY m.name, d.code",
    )
    .bind(tag)
    .bind(datacenter)
    .fetch_all(pool)
    .await?;
    let mut monitors: Vec<MonitorStatus> = Vec::new();
    for (name, kind, target, enabled, code, status) in rows {
        if monitors.last().is_none_or(|m| m.name != name) {
            monitors.push(MonitorStatus {
                name,
                kind,
                target,
                enabled,
                statuses: BTreeMap::new(),
            });
        }
        if let (Some(code), Some(monitor)) = (code, monitors.last_mut()) {
            monitor.statuses.insert(code, status);
        }
    }
    Ok(monitors)
}

/// Sets `enabled` on the named monitors, all of them or (when a name is unknown) none.
pub async fn set_enabled(
    pool: &PgPool,
    names: &[String],
    enabled: bool,
) -> Result<u64, QuickError> {
    let mut tx = pool.begin().await?;
    let known: Vec<String> =
        sqlx::query_scalar("SELECT name FROM api_monitors WHERE name = ANY ($1)")
            .bind(names)
            .fetch_all(&mut *tx)
            .await?;
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !known.contains(n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(QuickError::Unknown(unknown));
    }
    let changed =
        sqlx::query("UPDATE api_monitors SET enabled = $2 WHERE name = ANY ($1) AND enabled <> $2")
            .bind(names)
            .bind(enabled)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    tx.commit().await?;
    Ok(changed)
}
