//! Lots (work orders): a quantity of one product. A unit belongs to the open lot of its
//! fixture's product; a product has at most one open lot at a time, so a scan is never
//! ambiguous about which lot it counts toward.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::ids::{LotId, ProductName, StationId};
use crate::store::audit::{self, AuditEvent};
use crate::store::{Store, StoreError, now_utc, sql};

/// Why a lot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LotError {
    /// The product already has an open lot.
    #[error(
        "product {product} already has an open lot, {lot}; close it first (`station lot close {lot}`)"
    )]
    AlreadyOpen {
        /// The product.
        product: String,
        /// Its open lot.
        lot: String,
    },
    /// The lot ID is taken.
    #[error("lot {0} already exists")]
    Exists(String),
    /// No such lot.
    #[error("no lot {0}")]
    NotFound(String),
    /// The lot is closed already.
    #[error("lot {0} is already closed")]
    AlreadyClosed(String),
    /// No product profile by that name (a mistyped product).
    #[error("no product {product} at this station (its product profiles: {present})")]
    UnknownProduct {
        /// Asked for.
        product: String,
        /// The products the station has profiles for.
        present: String,
    },
    /// Quantity zero.
    #[error("a lot needs a quantity of at least 1")]
    ZeroQuantity,
    /// A generated lot ID was not valid (product names make lot IDs).
    #[error("cannot make a lot ID from product {0}; give one with --id")]
    NoId(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A lot as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Lot {
    /// Lot ID.
    pub id: String,
    /// Product.
    pub product: String,
    /// Units ordered.
    pub quantity: u32,
    /// `open` or `closed`.
    pub status: String,
    /// When it was opened.
    pub opened_at: String,
    /// By whom.
    pub opened_by: String,
    /// When it was closed.
    pub closed_at: Option<String>,
    /// Units recorded in it so far.
    pub units: i64,
}

/// Failures of one step for one reason.
#[derive(Debug, Clone, Serialize)]
pub struct FailureCount {
    /// The step that failed.
    pub step: String,
    /// Why.
    pub reason: String,
    /// How many runs.
    pub count: i64,
}

/// What `station lot show` reports.
#[derive(Debug, Clone, Serialize)]
pub struct LotReport {
    /// The lot.
    pub lot: Lot,
    /// Units by state.
    pub by_state: Vec<(String, i64)>,
    /// Units whose first run passed.
    pub first_pass: i64,
    /// Units with at least one finished run.
    pub attempted: i64,
    /// `first_pass / attempted`, if anything was attempted.
    pub first_pass_yield: Option<f64>,
    /// Failed runs by step and reason, most frequent first.
    pub failures: Vec<FailureCount>,
    /// Enrollments by upload status.
    pub uploads: Vec<(String, i64)>,
}

const SELECT: &str =
    "SELECT l.id, l.product, l.quantity, l.status, l.opened_at, l.opened_by, l.closed_at,
        (SELECT count(*) FROM units u WHERE u.lot_id = l.id) FROM lots l";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lot> {
    Ok(Lot {
        id: r.get(0)?,
        product: r.get(1)?,
        quantity: r.get(2)?,
        status: r.get(3)?,
        opened_at: r.get(4)?,
        opened_by: r.get(5)?,
        closed_at: r.get(6)?,
        units: r.get(7)?,
    })
}

/// Opens a lot of `product`, one of the station's `products` (the names of its product
/// profiles). Without an ID, one is made: `<product>-<YYYYMMDD>-<n>`.
pub fn open(
    store: &mut Store,
    (station, actor): (&StationId, &str),
    products: &[&str],
    product: &ProductName,
    quantity: u32,
    id: Option<LotId>,
) -> Result<Lot, LotError> {
    if !products.contains(&product.as_str()) {
        return Err(LotError::UnknownProduct {
            product: product.to_string(),
            present: if products.is_empty() {
                "none yet".into()
            } else {
                products.join(", ")
            },
        });
    }
    if quantity == 0 {
        return Err(LotError::ZeroQuantity);
    }
    let tx = store
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin"))?;
    if let Some(lot) = open_for(&tx, product)? {
        return Err(LotError::AlreadyOpen {
            product: product.to_string(),
            lot: lot.id,
        });
    }
    let id = match id {
        Some(id) => id,
        None => {
            let prefix = format!("{product}-{}", chrono::Utc::now().format("%Y%m%d"));
            let n: i64 = tx
                .query_row(
                    "SELECT count(*) FROM lots WHERE id LIKE ?1 || '-%'",
                    [&prefix],
                    |r| r.get(0),
                )
                .map_err(sql("count lots"))?;
            LotId::new(format!("{prefix}-{}", n + 1))
                .map_err(|_| LotError::NoId(product.to_string()))?
        }
    };
    if get(&tx, id.as_str())?.is_some() {
        return Err(LotError::Exists(id.to_string()));
    }
    tx.execute(
        "INSERT INTO lots (id, product, quantity, status, opened_at, opened_by) VALUES (?1, ?2, ?3, 'open', ?4, ?5)",
        params![id.as_str(), product.as_str(), quantity, now_utc(), actor],
    )
    .map_err(sql("open lot"))?;
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: "lot.open",
            subject: id.as_str(),
            details: serde_json::json!({"product": product.as_str(), "quantity": quantity}),
        },
    )?;
    let lot = get(&tx, id.as_str())?.ok_or_else(|| LotError::NotFound(id.to_string()))?;
    tx.commit().map_err(sql("commit"))?;
    Ok(lot)
}

/// Closes a lot: its fixtures refuse new units until another lot opens.
pub fn close(
    store: &mut Store,
    station: &StationId,
    actor: &str,
    id: &LotId,
) -> Result<Lot, LotError> {
    let tx = store
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin"))?;
    let lot = get(&tx, id.as_str())?.ok_or_else(|| LotError::NotFound(id.to_string()))?;
    if lot.status == "closed" {
        return Err(LotError::AlreadyClosed(id.to_string()));
    }
    tx.execute(
        "UPDATE lots SET status = 'closed', closed_at = ?2 WHERE id = ?1",
        params![id.as_str(), now_utc()],
    )
    .map_err(sql("close lot"))?;
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: "lot.close",
            subject: id.as_str(),
            details: serde_json::json!({"units": lot.units, "quantity": lot.quantity}),
        },
    )?;
    let lot = get(&tx, id.as_str())?.ok_or_else(|| LotError::NotFound(id.to_string()))?;
    tx.commit().map_err(sql("commit"))?;
    Ok(lot)
}

/// One lot.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Lot>, StoreError> {
    conn.query_row(&format!("{SELECT} WHERE l.id = ?1"), [id], row)
        .optional()
        .map_err(sql("read lot"))
}

/// The open lot of a product, if any.
pub fn open_for(conn: &Connection, product: &ProductName) -> Result<Option<Lot>, StoreError> {
    conn.query_row(
        &format!("{SELECT} WHERE l.product = ?1 AND l.status = 'open'"),
        [product.as_str()],
        row,
    )
    .optional()
    .map_err(sql("find open lot"))
}

/// The ID of the open lot of a product, if any: what a scan needs, without counting the
/// lot's units (a count over a large lot would cost every scan).
pub fn open_id_for(conn: &Connection, product: &ProductName) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT id FROM lots WHERE product = ?1 AND status = 'open'")
        .and_then(|mut st| st.query_row([product.as_str()], |r| r.get(0)).optional())
        .map_err(sql("find open lot"))
}

/// Every lot, newest first.
pub fn list(conn: &Connection) -> Result<Vec<Lot>, StoreError> {
    let mut stmt = conn
        .prepare(&format!("{SELECT} ORDER BY l.opened_at DESC, l.id"))
        .map_err(sql("list lots"))?;
    stmt.query_map([], row)
        .map_err(sql("list lots"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("list lots"))
}

fn pairs(conn: &Connection, query: &str, id: &str) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare(query).map_err(sql("lot report"))?;
    stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql("lot report"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("lot report"))
}

/// Counts by state, first-pass yield, failures by step and reason, upload progress.
pub fn report(conn: &Connection, id: &LotId) -> Result<LotReport, LotError> {
    let lot = get(conn, id.as_str())?.ok_or_else(|| LotError::NotFound(id.to_string()))?;
    let by_state = pairs(
        conn,
        "SELECT state, count(*) FROM units WHERE lot_id = ?1 GROUP BY state ORDER BY state",
        id.as_str(),
    )?;
    // A unit's first run is its run with the lowest id; only finished runs count.
    let (first_pass, attempted): (i64, i64) = conn
        .query_row(
            "SELECT coalesce(sum(r.result = 'passed'), 0), count(*)
             FROM units u JOIN runs r ON r.id = (SELECT min(id) FROM runs WHERE unit_id = u.id)
             WHERE u.lot_id = ?1 AND r.result IS NOT NULL",
            [id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql("first-pass yield"))?;
    let mut stmt = conn
        .prepare(
            "SELECT coalesce(r.fail_step, '?'), coalesce(r.fail_reason, '?'), count(*) AS n
             FROM runs r JOIN units u ON u.id = r.unit_id
             WHERE u.lot_id = ?1 AND r.result = 'failed'
             GROUP BY 1, 2 ORDER BY n DESC, 1, 2",
        )
        .map_err(sql("failures"))?;
    let failures = stmt
        .query_map([id.as_str()], |r| {
            Ok(FailureCount {
                step: r.get(0)?,
                reason: r.get(1)?,
                count: r.get(2)?,
            })
        })
        .map_err(sql("failures"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("failures"))?;
    let uploads = pairs(
        conn,
        "SELECT e.status, count(*) FROM enrollments e JOIN units u ON u.id = e.unit_id
         WHERE u.lot_id = ?1 GROUP BY e.status ORDER BY e.status",
        id.as_str(),
    )?;
    #[allow(clippy::cast_precision_loss)]
    let first_pass_yield = (attempted > 0).then(|| first_pass as f64 / attempted as f64);
    Ok(LotReport {
        lot,
        by_state,
        first_pass,
        attempted,
        first_pass_yield,
        failures,
        uploads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::create(&d.path().join("s.db"), &StoreConfig::default()).unwrap();
        (d, s)
    }

    /// The product profiles the tests' station has.
    const PRODUCTS: &[&str] = &["sensor-a", "other", "p1"];

    #[test]
    fn one_open_lot_per_product_and_generated_ids() {
        let (_d, mut s) = store();
        let st = StationId::new("st").unwrap();
        let p = ProductName::new("sensor-a").unwrap();
        let lot = open(&mut s, (&st, "sup"), PRODUCTS, &p, 10, None).unwrap();
        assert!(
            lot.id.starts_with("sensor-a-") && lot.id.ends_with("-1"),
            "{}",
            lot.id
        );
        assert!(matches!(
            open(&mut s, (&st, "sup"), PRODUCTS, &p, 5, None),
            Err(LotError::AlreadyOpen { .. })
        ));
        let id = LotId::new(lot.id.clone()).unwrap();
        close(&mut s, &st, "sup", &id).unwrap();
        assert!(matches!(
            close(&mut s, &st, "sup", &id),
            Err(LotError::AlreadyClosed(_))
        ));
        let second = open(&mut s, (&st, "sup"), PRODUCTS, &p, 5, None).unwrap();
        assert!(second.id.ends_with("-2"), "{}", second.id);
        assert!(matches!(
            open(
                &mut s,
                (&st, "sup"),
                PRODUCTS,
                &ProductName::new("other").unwrap(),
                1,
                Some(id)
            ),
            Err(LotError::Exists(_))
        ));
        assert_eq!(list(s.conn()).unwrap().len(), 2);
        // A product the station has no profile for is refused, and nothing is opened.
        let typo = open(
            &mut s,
            (&st, "sup"),
            PRODUCTS,
            &ProductName::new("sensor-b").unwrap(),
            5,
            None,
        )
        .unwrap_err();
        assert_eq!(
            typo.to_string(),
            "no product sensor-b at this station (its product profiles: sensor-a, other, p1)"
        );
        assert_eq!(list(s.conn()).unwrap().len(), 2);
    }

    #[test]
    fn report_counts_yield_failures_and_uploads() {
        let (_d, mut s) = store();
        let st = StationId::new("st").unwrap();
        let p = ProductName::new("p1").unwrap();
        let id = LotId::new("L1").unwrap();
        open(&mut s, (&st, "sup"), PRODUCTS, &p, 3, Some(id.clone())).unwrap();
        // Three units: one passed first time, one failed then passed, one failed twice.
        s.conn()
            .execute_batch(
                "INSERT INTO units (id, serial, lot_id, product, state, created_at, updated_at) VALUES
                   (1, 'A', 'L1', 'p1', 'uploaded', 't', 't'),
                   (2, 'B', 'L1', 'p1', 'uploaded', 't', 't'),
                   (3, 'C', 'L1', 'p1', 'failed', 't', 't');
                 INSERT INTO runs (id, unit_id, fixture, started_at, result, fail_step, fail_reason) VALUES
                   (1, 1, 'f1', 't', 'passed', NULL, NULL),
                   (2, 2, 'f1', 't', 'failed', 'keygen', 'timeout'),
                   (3, 2, 'f1', 't', 'passed', NULL, NULL),
                   (4, 3, 'f2', 't', 'failed', 'keygen', 'timeout'),
                   (5, 3, 'f2', 't', 'failed', 'put_cert', 'readback differs');
                 INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at) VALUES
                   (1, 'local', 'individual', 'A', '{}', 'uploaded', 't'),
                   (2, 'local', 'individual', 'B', '{}', 'queued', 't');",
            )
            .unwrap();
        let r = report(s.conn(), &id).unwrap();
        assert_eq!(r.lot.units, 3);
        assert_eq!(
            r.by_state,
            vec![("failed".into(), 1), ("uploaded".into(), 2)]
        );
        assert_eq!((r.first_pass, r.attempted), (1, 3));
        assert!((r.first_pass_yield.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.failures[0].step, "keygen");
        assert_eq!(r.failures[0].count, 2);
        assert_eq!(r.failures[1].reason, "readback differs");
        assert_eq!(
            r.uploads,
            vec![("queued".into(), 1), ("uploaded".into(), 1)]
        );
    }
}
