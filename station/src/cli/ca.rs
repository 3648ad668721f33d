//! `station ca show|chain|issue|verification-cert|list-issued|csr|import`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use rusqlite::TransactionBehavior;

use super::{ActorArg, CliError, Context};
use crate::ca::authority::{self, Authority, IssuedCert};
use crate::ca::service::{self, AuditKey, CaServiceError, RecordContext};
use crate::ca::{CaError, CommonName, SubjectKey, UnitSubject, verify};
use crate::config::Config;
use crate::hsm::TokenSession;
use crate::store::Store;

/// Which CA signs a verification certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhichCa {
    /// The issuing (intermediate) CA.
    Intermediate,
    /// The root CA.
    Root,
}

/// Certificate authority commands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the CA chain, validity, days to expiry and key attributes read from the token.
    Show,
    /// Write the chain (issuing CA, then root) as PEM.
    Chain {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a device certificate for a CSR (or a bare public key).
    Issue {
        /// PKCS#10 request, PEM or DER; its signature is checked, its extensions ignored.
        #[arg(
            long,
            conflicts_with = "public_key",
            required_unless_present = "public_key"
        )]
        csr: Option<PathBuf>,
        /// SubjectPublicKeyInfo, PEM or DER, instead of a CSR.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// The unit's DPS registration ID: the certificate's CN.
        #[arg(long)]
        registration_id: String,
        /// Certificate profile.
        #[arg(long, default_value = "device")]
        profile: String,
        /// Optional subject serialNumber from unit data.
        #[arg(long)]
        serial_number: Option<String>,
        /// Output file (PEM).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Make a DPS proof-of-possession certificate: CN = the verification code.
    VerificationCert {
        /// The verification code DPS generated for the CA certificate.
        #[arg(long)]
        code: String,
        /// Which CA certificate is being proven.
        #[arg(long, value_enum, default_value_t = WhichCa::Intermediate)]
        ca: WhichCa,
        /// Output file (PEM).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Sign the issuing CA's certificate revocation list: every certificate of it the station
    /// no longer stands behind and not yet expired (a scrapped unit's, reason
    /// cessationOfOperation; one a retry of its unit replaced, reason superseded). Signed in
    /// the HSM, checked with the CA certificate, recorded and audited before it is written.
    Crl {
        /// Output file (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Valid for this many days (its nextUpdate) instead of `[ca] crl_valid_days`.
        #[arg(long)]
        days: Option<u32>,
        /// Who signs it.
        #[command(flatten)]
        actor: ActorArg,
    },
    /// List the newest issued certificates.
    ListIssued {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Make a CSR over the issuing CA key (generated in the HSM if absent) for an external root.
    Csr {
        /// Output file (PEM).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Install the issuing CA certificate an external root signed, with that root's chain.
    Import {
        /// The issuing CA certificate (PEM or DER); its key must be the HSM key.
        #[arg(long)]
        cert: PathBuf,
        /// The chain above it up to the root (PEM bundle).
        #[arg(long)]
        chain: PathBuf,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Benchmark helper: raw HSM signs/s, certificates built, signed and checked with
    /// nothing recorded (floor/s), and recorded issuances/s, all on one thread.
    #[command(hide = true)]
    Bench {
        /// Operations per measurement.
        #[arg(long, default_value_t = 2000)]
        count: u32,
        /// Certificates per committed transaction. Each is released only once the fsync
        /// covering its commit returned; above 1, a second thread waits for that fsync while
        /// the next batch is signed (group commit), one stream across the slices.
        #[arg(long, default_value_t = 1)]
        batch: u32,
        /// After each slice, print its times (`slice raw=<s> floor=<s> issuance=<s> n=<n>`)
        /// and wait for a line on stdin: another measurement can take its turn meanwhile. The
        /// wait for the issuance stream's last fsync comes last, as a slice with n=0.
        #[arg(long)]
        turns: bool,
    },
}

/// Runs a `station ca` command.
pub fn run(ctx: &Context, cmd: &CaCommand) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let cfg = &loaded.config;
    let home = &ctx.home;
    match cmd {
        CaCommand::Chain { out } => {
            let chain = chain_ders(ctx, cfg)?;
            let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            write_out(out, verify::to_pem(&refs).as_bytes())?;
            println!("wrote {} certificates to {}", chain.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Crl { out, days, actor } => {
            let actor = actor.resolve()?;
            let days = days.unwrap_or(cfg.ca.crl_valid_days);
            if days == 0 {
                return Err(CliError::Usage(
                    "--days must be at least 1: a CRL valid for no time is expired when it is read"
                        .into(),
                ));
            }
            let mut store = ctx.open_store(cfg)?;
            let hsm = service::open_hsm(home, cfg)?;
            let session = service::open_ca_token(&hsm, home, cfg)?;
            let ca = service::load_issuing(&session, home, cfg)?;
            let audit_key =
                AuditKey::find(&session, &cfg.ca.audit_key_label).map_err(CaError::from)?;
            let crl = service::issue_crl(
                &mut store,
                (&ca, &audit_key),
                (&cfg.station_id(), &actor),
                time::Duration::days(i64::from(days)),
            )?;
            crate::ca::crl::write_file(out, &crl.der)?;
            let count = |r| crl.entries.iter().filter(|e| e.reason == r).count();
            println!(
                "CRL number {} written to {}: {} certificate(s) listed ({} of scrapped units, cessationOfOperation; {} replaced by a retry, superseded); valid until {}",
                crl.number,
                out.display(),
                crl.entries.len(),
                count(crate::ca::crl::Reason::Scrapped),
                count(crate::ca::crl::Reason::Superseded),
                crl.next_update
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::ListIssued { limit } => list_issued(ctx, cfg, *limit),
        CaCommand::Show => show(ctx, cfg),
        CaCommand::Issue {
            csr,
            public_key,
            registration_id,
            profile,
            serial_number,
            out,
            actor,
        } => {
            let actor = actor.resolve()?;
            let profiles = service::profiles(home, cfg)?;
            let profile = profiles.get(profile)?;
            let cn = CommonName::registration_id(registration_id)?;
            let key = match (csr, public_key) {
                (Some(p), _) => SubjectKey::from_csr(&read(p)?, profile)?,
                (None, Some(p)) => {
                    let k = SubjectKey::from_spki(&read(p)?)?;
                    k.check_allowed(profile)?;
                    k
                }
                (None, None) => return Err(CaError::CsrParse.into()),
            };
            let unit = UnitSubject {
                serial_number: serial_number.clone(),
                ..UnitSubject::default()
            };
            let mut store = ctx.open_store(cfg)?;
            let hsm = service::open_hsm(home, cfg)?;
            let session = service::open_ca_token(&hsm, home, cfg)?;
            let ca = service::load_issuing(&session, home, cfg)?;
            let audit_key =
                AuditKey::find(&session, &cfg.ca.audit_key_label).map_err(CaError::from)?;
            let cert = ca.issue(profile, &key, cn.as_str(), &unit)?;
            let rec = RecordContext {
                station: &cfg.station_id(),
                actor: &actor,
                event: "ca.issue",
                registration_id: Some(cn.as_str()),
                unit_id: None,
            };
            service::commit_issued(&mut store, &ca, &audit_key, &cert, &rec)?;
            // Released only now, after the record is committed.
            write_out(out, verify::to_pem(&[&cert.der]).as_bytes())?;
            println!(
                "issued certificate serial {} for {} (profile {}) to {}",
                cert.serial.hex(),
                cn.as_str(),
                cert.profile,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::VerificationCert {
            code,
            ca: which,
            out,
            actor,
        } => {
            let actor = actor.resolve()?;
            authority::check_code(code)?;
            let profiles = service::profiles(home, cfg)?;
            let profile = profiles.get("verification")?;
            let mut store = ctx.open_store(cfg)?;
            let hsm = service::open_hsm(home, cfg)?;
            let session = service::open_ca_token(&hsm, home, cfg)?;
            let audit_key =
                AuditKey::find(&session, &cfg.ca.audit_key_label).map_err(CaError::from)?;
            let root_session: Option<TokenSession>;
            let ca = match which {
                WhichCa::Intermediate => service::load_issuing(&session, home, cfg)?,
                WhichCa::Root => {
                    root_session = service::open_root_token(&hsm, home, cfg)?;
                    let Some(rs) = root_session.as_ref() else {
                        return Err(CaError::Chain {
                            problem:
                                "no root token is configured ([hsm.root]); the root is offline"
                                    .into(),
                        }
                        .into());
                    };
                    service::load_root(rs, home, cfg)?
                }
            };
            let cert = ca.verification_cert(profile, code)?;
            let rec = RecordContext {
                station: &cfg.station_id(),
                actor: &actor,
                event: "ca.verification_cert",
                registration_id: None,
                unit_id: None,
            };
            service::commit_issued(&mut store, &ca, &audit_key, &cert, &rec)?;
            write_out(out, verify::to_pem(&[&cert.der]).as_bytes())?;
            println!(
                "verification certificate CN={} signed by the {} CA written to {}",
                code,
                match which {
                    WhichCa::Intermediate => "issuing",
                    WhichCa::Root => "root",
                },
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Csr { out, actor } => {
            let actor = actor.resolve()?;
            let profiles = service::profiles(home, cfg)?;
            let mut store = ctx.open_store(cfg)?;
            let hsm = service::open_hsm(home, cfg)?;
            let session = service::open_ca_token(&hsm, home, cfg)?;
            let pem = authority::csr(&session, &cfg.ca.key_label, profiles.get("intermediate")?)?;
            write_out(out, pem.as_bytes())?;
            audit_simple(
                &mut store,
                &session,
                cfg,
                &actor,
                "ca.csr",
                &out.display().to_string(),
                serde_json::json!({ "key_label": cfg.ca.key_label }),
            )?;
            println!(
                "wrote a CSR for HSM key {:?} to {}",
                cfg.ca.key_label,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Import { cert, chain, actor } => {
            let actor = actor.resolve()?;
            let cert_der = verify::from_pem_bundle(&read(cert)?)
                .into_iter()
                .next()
                .ok_or_else(|| CaError::CaCertParse {
                    what: cert.display().to_string(),
                })?;
            let chain_ders = verify::from_pem_bundle(&read(chain)?);
            let mut store = ctx.open_store(cfg)?;
            let hsm = service::open_hsm(home, cfg)?;
            let session = service::open_ca_token(&hsm, home, cfg)?;
            // Refuses a certificate over any key but the HSM's, then one whose chain fails.
            Authority::load(
                &session,
                &cfg.ca.key_label,
                cert_der.clone(),
                &cert.display().to_string(),
            )?;
            verify::chain(&cert_der, &chain_ders)?;
            let cert_path = service::cert_path(home, cfg);
            let root_path = service::root_path(home, cfg);
            for p in [&cert_path, &root_path] {
                if p.exists() {
                    return Err(CaError::WriteFile {
                        path: p.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "a CA certificate is already installed; move it away first",
                        ),
                    }
                    .into());
                }
            }
            let chain_refs: Vec<&[u8]> = chain_ders.iter().map(Vec::as_slice).collect();
            write_out(&root_path, verify::to_pem(&chain_refs).as_bytes())?;
            write_out(&cert_path, verify::to_pem(&[&cert_der]).as_bytes())?;
            audit_simple(
                &mut store,
                &session,
                cfg,
                &actor,
                "ca.import",
                &service::issuer_key_id(&cert_der)?,
                serde_json::json!({ "chain_len": chain_ders.len() }),
            )?;
            println!(
                "installed the issuing CA certificate ({}) and its chain ({} certificates)",
                cert_path.display(),
                chain_ders.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Bench {
            count,
            batch,
            turns,
        } => bench(ctx, cfg, *count, (*batch).max(1), *turns),
    }
}

fn read(p: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(p).map_err(|source| CaError::ReadFile {
        path: p.to_path_buf(),
        source,
    })
}

fn write_out(p: &Path, bytes: &[u8]) -> Result<(), CaError> {
    std::fs::write(p, bytes).map_err(|source| CaError::WriteFile {
        path: p.to_path_buf(),
        source,
    })
}

/// The issuing CA certificate followed by the chain file's certificates.
fn chain_ders(ctx: &Context, cfg: &Config) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = vec![service::read_cert(&service::cert_path(&ctx.home, cfg))?];
    let root = service::root_path(&ctx.home, cfg);
    out.extend(verify::from_pem_bundle(&read(&root)?));
    Ok(out)
}

fn audit_simple(
    store: &mut Store,
    session: &TokenSession,
    cfg: &Config,
    actor: &str,
    event: &str,
    subject: &str,
    details: serde_json::Value,
) -> Result<(), CliError> {
    let tx = store
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(crate::store::sql("begin audit transaction"))
        .map_err(CaServiceError::from)?;
    crate::store::audit::append(
        &tx,
        &cfg.station_id(),
        &crate::store::audit::AuditEvent {
            actor,
            event,
            subject,
            details,
        },
    )
    .map_err(CaServiceError::from)?;
    // The audit key may not exist yet on a token prepared for an external root.
    if let Ok(key) = AuditKey::find(session, &cfg.ca.audit_key_label) {
        key.seal(&tx)?;
    }
    tx.commit()
        .map_err(crate::store::sql("commit audit transaction"))
        .map_err(CaServiceError::from)?;
    Ok(())
}

fn describe(der: &[u8], what: &str, warn_days: u32) -> Result<String, CaError> {
    let c = verify::parse(der, what)?;
    let days = verify::days_to_expiry(&c);
    let warn = if days < i64::from(warn_days) {
        "  WARNING: expires soon"
    } else {
        ""
    };
    Ok(format!(
        "  subject   {}\n  issuer    {}\n  serial    {}\n  valid     {} .. {} ({days} days left){warn}\n",
        c.subject(),
        c.issuer(),
        c.raw_serial_as_string(),
        c.validity().not_before,
        c.validity().not_after,
    ))
}

fn show(ctx: &Context, cfg: &Config) -> Result<ExitCode, CliError> {
    let home = &ctx.home;
    let mut out = std::io::stdout().lock();
    let hsm = service::open_hsm(home, cfg)?;
    writeln!(out, "HSM module {}", hsm.module().display())?;
    let session = service::open_ca_token(&hsm, home, cfg)?;
    let ca = service::load_issuing(&session, home, cfg)?;
    writeln!(
        out,
        "issuing CA ({})",
        service::cert_path(home, cfg).display()
    )?;
    write!(
        out,
        "{}",
        describe(ca.cert_der(), "issuing CA", cfg.ca.expiry_warn_days)?
    )?;
    writeln!(
        out,
        "  key       {:?} in token {}: {}",
        cfg.ca.key_label,
        session.token(),
        ca.protection().summary()
    )?;
    let chain = chain_ders(ctx, cfg)?;
    for (i, der) in chain.iter().enumerate().skip(1) {
        writeln!(
            out,
            "chain[{i}] ({})",
            service::root_path(home, cfg).display()
        )?;
        write!(out, "{}", describe(der, "root", cfg.ca.expiry_warn_days)?)?;
    }
    if let Some(rs) = service::open_root_token(&hsm, home, cfg)? {
        let key = rs.find_ec_key(&cfg.ca.root_key_label)?;
        let prot = rs.key_protection(&key)?;
        writeln!(
            out,
            "  key       {:?} in token {}: {}",
            cfg.ca.root_key_label,
            rs.token(),
            prot.summary()
        )?;
    }
    let chain_ok = match verify::chain(&chain[0], &chain[1..]) {
        Ok(()) => "verifies".to_owned(),
        Err(e) => format!("BROKEN: {e}"),
    };
    writeln!(out, "chain      {chain_ok}")?;
    Ok(ExitCode::SUCCESS)
}

fn list_issued(ctx: &Context, cfg: &Config, limit: u32) -> Result<ExitCode, CliError> {
    let store = ctx.open_store_read(cfg)?;
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT serial_hex, subject, profile, not_after, issued_at, status FROM certificates
             ORDER BY id DESC LIMIT ?1",
        )
        .map_err(crate::store::sql("list certificates"))?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(crate::store::sql("list certificates"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(crate::store::sql("list certificates"))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32}  {:<12}  {:<8}  {:<20}  {:<27}  subject",
        "serial", "profile", "status", "not after", "issued at"
    )?;
    for (serial, subject, profile, not_after, issued_at, status) in rows {
        writeln!(
            out,
            "{serial:<32}  {profile:<12}  {status:<8}  {not_after:<20}  {issued_at:<27}  {subject}"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(
    ctx: &Context,
    cfg: &Config,
    count: u32,
    batch: u32,
    turns: bool,
) -> Result<ExitCode, CliError> {
    use sha2::Digest;
    let home = &ctx.home;
    let mut store = ctx.open_store(cfg)?;
    let hsm = service::open_hsm(home, cfg)?;
    let session = service::open_ca_token(&hsm, home, cfg)?;
    let ca = service::load_issuing(&session, home, cfg)?;
    let audit_key = AuditKey::find(&session, &cfg.ca.audit_key_label).map_err(CaError::from)?;
    let profiles = service::profiles(home, cfg)?;
    let profile = profiles.get("device")?;
    let key = session.find_ec_key(&cfg.ca.key_label)?;

    // Issuance: a unit's public key in, a verified certificate recorded durably out.
    let unit_key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Build)?;
    let subject = SubjectKey::from_spki(&rcgen::PublicKeyData::subject_public_key_info(&unit_key))?;
    // Warm-up: the first certificates pay for the HSM's session copy of the key and for
    // first-use setup in the crypto libraries.
    for i in 0..16 {
        ca.issue(
            profile,
            &subject,
            &format!("probe-{i}"),
            &UnitSubject::default(),
        )?;
    }

    let station = cfg.station_id();
    let rids: Vec<String> = (0..count).map(|i| format!("bench-unit-{i}")).collect();
    store.group_commit()?;
    // Raw signs, certificates built, signed and checked but not recorded (the floor), and
    // issuances alternate in slices, each timed on its own and summed: this machine's speed
    // drifts within a second, and the sides of a ratio should meet the same drift. Raw: the
    // same module, token, session kind and key, one C_Sign per iteration, through the handle
    // issuance signs with (the key's session copy).
    let mut raw_time = std::time::Duration::ZERO;
    let mut floor_time = std::time::Duration::ZERO;
    let mut issue_time = std::time::Duration::ZERO;
    let mut signed = 0u32;
    let mut built = 0u32;
    let report = |raw: f64, floor: f64, issuance: f64, n: usize| -> std::io::Result<()> {
        println!("slice raw={raw:.6} floor={floor:.6} issuance={issuance:.6} n={n}");
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).map(|_| ())
    };
    // Issuance is one stream across the slices, as a running station's is (group commit): a
    // releaser thread waits for the fsync covering each batch while the issuing thread goes
    // on, so a slice's last fsync completes during the next slice's raw signs (or openssl's
    // turn) instead of stalling a thread that has nothing else to do. The stream's last
    // fsync is waited for on the issuance clock, and every certificate counted is released
    // (its commit on disk) before the figures are printed.
    let released = std::thread::scope(|scope| -> Result<usize, CliError> {
        let (to_releaser, batches) = std::sync::mpsc::channel::<(crate::store::Durable, usize)>();
        let releaser = scope.spawn(move || -> Result<usize, crate::store::StoreError> {
            let mut released = 0;
            for (durable, n) in batches {
                durable.wait()?;
                released += n;
            }
            Ok(released)
        });
        let mut waited = 0;
        for slice in rids.chunks(BENCH_SLICE) {
            let before = (raw_time, floor_time, issue_time);
            let start = std::time::Instant::now();
            for _ in slice {
                let digest = sha2::Sha256::digest(signed.to_be_bytes());
                session.sign_digest(&key, &digest)?;
                signed += 1;
            }
            raw_time += start.elapsed();
            // The floor: building, signing and checking each certificate as issuance does,
            // with nothing recorded; what issuance adds beyond it is the database.
            let start = std::time::Instant::now();
            for rid in slice {
                ca.issue(profile, &subject, rid, &UnitSubject::default())?;
                built += 1;
            }
            floor_time += start.elapsed();
            let start = std::time::Instant::now();
            waited += bench_issue(
                &mut store,
                (&ca, &audit_key, profile, &subject, &station),
                slice,
                batch,
                &to_releaser,
            )?;
            issue_time += start.elapsed();
            if turns {
                report(
                    (raw_time - before.0).as_secs_f64(),
                    (floor_time - before.1).as_secs_f64(),
                    (issue_time - before.2).as_secs_f64(),
                    slice.len(),
                )?;
            }
        }
        drop(to_releaser);
        let start = std::time::Instant::now();
        let released = releaser
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let last = start.elapsed();
        issue_time += last;
        if turns {
            // The last fsync's wait: issuance time of no new certificates.
            report(0.0, 0.0, last.as_secs_f64(), 0)?;
        }
        Ok(waited + released)
    })?;
    let raw = f64::from(signed) / raw_time.as_secs_f64();
    let issued = f64::from(u32::try_from(released).unwrap_or(u32::MAX)) / issue_time.as_secs_f64();
    let floor = f64::from(built) / floor_time.as_secs_f64();
    println!("raw-sign/s={raw:.0} floor/s={floor:.0} issuance/s={issued:.0}");
    Ok(ExitCode::SUCCESS)
}

/// Raw signs, floor certificates and issuances alternate in slices of this many (see `bench`).
const BENCH_SLICE: usize = 250;

/// What issuing a bench certificate needs: the CA, its audit key, the profile, the unit's key
/// and the station recording it.
type BenchIssuer<'a, 's> = (
    &'a Authority<'s>,
    &'a AuditKey<'s>,
    &'a crate::ca::profile::Profile,
    &'a SubjectKey,
    &'a crate::ids::StationId,
);

/// Issues, checks and records a certificate for each of `rids` in commits of `batch`. Durable
/// commits as the line makes them (group commit): a batch is written with synchronous=NORMAL
/// and its certificates are released once one fdatasync of the WAL covers it. With `batch` 1
/// the issuing thread waits for that fsync before the next certificate, and the count it gives
/// is of those released; with larger batches each commit goes to `releaser`, which waits for
/// it while the issuing thread signs the next batch, and the count is 0.
fn bench_issue(
    store: &mut Store,
    (ca, audit_key, profile, subject, station): BenchIssuer<'_, '_>,
    rids: &[String],
    batch: u32,
    releaser: &std::sync::mpsc::Sender<(crate::store::Durable, usize)>,
) -> Result<usize, CliError> {
    let mut waited = 0;
    for chunk in rids.chunks(batch as usize) {
        let mut certs = Vec::with_capacity(chunk.len());
        for rid in chunk {
            certs.push(ca.issue(profile, subject, rid, &UnitSubject::default())?);
        }
        let recs: Vec<(&IssuedCert, RecordContext<'_>)> = certs
            .iter()
            .zip(chunk)
            .map(|(c, rid)| {
                (
                    c,
                    RecordContext {
                        station,
                        actor: "bench",
                        event: "ca.issue",
                        registration_id: Some(rid.as_str()),
                        unit_id: None,
                    },
                )
            })
            .collect();
        service::commit_batch(store, ca, audit_key, &recs)?;
        let durable = store.durable();
        if batch == 1 {
            durable.wait()?;
            waited += certs.len();
        } else {
            releaser.send((durable, certs.len())).ok();
        }
    }
    Ok(waited)
}
