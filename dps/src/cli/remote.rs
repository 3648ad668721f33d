//! Commands mirroring `az iot dps enrollment|enrollment-group|registration`, for any DPS.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::CliError;
use crate::client::{ClientOptions, ServiceClient};
use crate::ids::{DeviceId, EnrollmentGroupId, RegistrationId};
use crate::sas::ConnectionString;
use crate::wire::{
    AllocationPolicy, AttestationMechanism, EnrollmentGroup, IndividualEnrollment, InitialTwin,
    InitialTwinProperties, KeyText, ProvisioningStatus, X509CaReferences,
};

/// Which DPS to talk to.
#[derive(Args)]
pub struct Target {
    /// Service connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...).
    #[arg(long, env = "DPS_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    /// A local service's data directory: uses its connection-string and ca.pem.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust.
    #[arg(long, env = "DPS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl Target {
    /// A client for the target.
    pub fn client(&self) -> Result<ServiceClient, CliError> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|source| CliError::File {
                path: p.clone(),
                source,
            })
        };
        let (cs_text, mut ca) = match (&self.connection_string, &self.data) {
            (Some(cs), _) => (cs.clone(), None),
            (None, Some(d)) => (read(&d.join("connection-string"))?, Some(d.join("ca.pem"))),
            (None, None) => {
                return Err(CliError::Usage(
                    "give --connection-string (or DPS_CONNECTION_STRING) or --data DIR".into(),
                ));
            }
        };
        if self.ca_file.is_some() {
            ca.clone_from(&self.ca_file);
        }
        let cs: ConnectionString = cs_text.parse()?;
        Ok(ServiceClient::new(
            cs,
            ClientOptions {
                extra_ca_file: ca,
                ..ClientOptions::default()
            },
        )?)
    }
}

/// Attestation kinds on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AttestationKind {
    /// TPM endorsement key.
    Tpm,
    /// X.509 certificate.
    X509,
    /// Symmetric key.
    Symmetrickey,
}

/// Fields shared by enrollment and group creation.
#[derive(Args)]
pub struct CommonFields {
    /// Primary symmetric key (generated when absent). Visible to `ps`: prefer
    /// --primary-key-env.
    #[arg(long)]
    pub primary_key: Option<String>,
    /// Read the primary symmetric key from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "primary_key")]
    pub primary_key_env: Option<String>,
    /// Secondary symmetric key (generated when absent). Visible to `ps`: prefer
    /// --secondary-key-env.
    #[arg(long)]
    pub secondary_key: Option<String>,
    /// Read the secondary symmetric key from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "secondary_key")]
    pub secondary_key_env: Option<String>,
    /// PEM file of the primary certificate.
    #[arg(long)]
    pub certificate_path: Option<PathBuf>,
    /// Hub host names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub iot_hubs: Vec<String>,
    /// Allocation policy.
    #[arg(long)]
    pub allocation_policy: Option<String>,
    /// enabled or disabled.
    #[arg(long)]
    pub provisioning_status: Option<String>,
    /// Initial twin tags (JSON object).
    #[arg(long)]
    pub initial_twin_tags: Option<String>,
    /// Initial twin desired properties (JSON object).
    #[arg(long)]
    pub initial_twin_properties: Option<String>,
    /// Replace only at this etag.
    #[arg(long)]
    pub etag: Option<String>,
    /// Print the symmetric keys in the answer (left out otherwise; `show --show-keys` reads
    /// them later).
    #[arg(long)]
    pub show_keys: bool,
}

/// `dps enrollment ...`
#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum EnrollmentCommand {
    /// Create or replace an individual enrollment.
    Create {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Registration ID.
        #[arg(long)]
        registration_id: RegistrationId,
        /// Attestation.
        #[arg(long)]
        attestation_type: AttestationKind,
        /// TPM endorsement key (base64 TPM2B_PUBLIC).
        #[arg(long)]
        endorsement_key: Option<String>,
        /// Device ID in the hub.
        #[arg(long)]
        device_id: Option<DeviceId>,
        /// Shared fields.
        #[command(flatten)]
        fields: CommonFields,
    },
    /// Show an enrollment.
    Show {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Registration ID.
        #[arg(long)]
        registration_id: RegistrationId,
        /// Include the attestation's keys.
        #[arg(long)]
        show_keys: bool,
    },
    /// List enrollments.
    List {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Page size of the underlying queries.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// Delete an enrollment.
    Delete {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Registration ID.
        #[arg(long)]
        registration_id: RegistrationId,
        /// Delete only at this etag.
        #[arg(long)]
        etag: Option<String>,
    },
}

/// `dps group ...`
#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum GroupCommand {
    /// Create or replace an enrollment group.
    Create {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Group ID.
        #[arg(long)]
        enrollment_group_id: EnrollmentGroupId,
        /// Attestation (x509 or symmetrickey).
        #[arg(long)]
        attestation_type: AttestationKind,
        /// Name of a verified CA certificate instead of --certificate-path.
        #[arg(long)]
        ca_name: Option<String>,
        /// Shared fields.
        #[command(flatten)]
        fields: CommonFields,
    },
    /// Show a group.
    Show {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Group ID.
        #[arg(long)]
        enrollment_group_id: EnrollmentGroupId,
        /// Include the attestation's keys.
        #[arg(long)]
        show_keys: bool,
    },
    /// List groups.
    List {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Page size of the underlying queries.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// Delete a group.
    Delete {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Group ID.
        #[arg(long)]
        enrollment_group_id: EnrollmentGroupId,
        /// Delete only at this etag.
        #[arg(long)]
        etag: Option<String>,
    },
}

/// `dps registration ...`
#[derive(Subcommand)]
pub enum RegistrationCommand {
    /// Show a registration record.
    Show {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Registration ID.
        #[arg(long)]
        registration_id: RegistrationId,
    },
    /// List the registration records of a group.
    List {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Group ID.
        #[arg(long)]
        enrollment_group_id: EnrollmentGroupId,
    },
    /// Delete a registration record.
    Delete {
        /// Target.
        #[command(flatten)]
        target: Target,
        /// Registration ID.
        #[arg(long)]
        registration_id: RegistrationId,
        /// Delete only at this etag.
        #[arg(long)]
        etag: Option<String>,
    },
}

fn print<T: Serialize>(v: &T) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn json_object(
    flag: &str,
    text: Option<&str>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, CliError> {
    text.map(|t| {
        serde_json::from_str(t)
            .map_err(|e| CliError::Usage(format!("{flag}: not a JSON object: {e}")))
    })
    .transpose()
}

fn enum_arg<T: serde::de::DeserializeOwned>(
    flag: &str,
    v: Option<&str>,
) -> Result<Option<T>, CliError> {
    v.map(|s| {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| CliError::Usage(format!("{flag} {s:?} is not a valid value")))
    })
    .transpose()
}

struct Shared {
    twin: Option<InitialTwin>,
    hubs: Option<Vec<String>>,
    allocation: Option<AllocationPolicy>,
    status: Option<ProvisioningStatus>,
}

fn shared(f: &CommonFields) -> Result<Shared, CliError> {
    let tags = json_object("--initial-twin-tags", f.initial_twin_tags.as_deref())?;
    let desired = json_object(
        "--initial-twin-properties",
        f.initial_twin_properties.as_deref(),
    )?;
    let twin = (tags.is_some() || desired.is_some()).then(|| InitialTwin {
        tags,
        properties: desired.map(|d| InitialTwinProperties { desired: Some(d) }),
    });
    Ok(Shared {
        twin,
        hubs: (!f.iot_hubs.is_empty()).then(|| f.iot_hubs.clone()),
        allocation: enum_arg("--allocation-policy", f.allocation_policy.as_deref())?,
        status: enum_arg("--provisioning-status", f.provisioning_status.as_deref())?,
    })
}

fn read_pem(p: Option<&PathBuf>) -> Result<String, CliError> {
    let p = p.ok_or_else(|| CliError::Usage("x509 attestation needs --certificate-path".into()))?;
    std::fs::read_to_string(p).map_err(|source| CliError::File {
        path: p.clone(),
        source,
    })
}

/// Leaves the keys out of a create's answer unless asked for, and says so.
fn hide_keys(a: &mut AttestationMechanism, show_keys: bool, what: &str) {
    if !show_keys && a.clear_symmetric_keys() {
        eprintln!(
            "the {what}'s symmetric keys are not shown: add --show-keys, or read them with `dps {what} show --show-keys`"
        );
    }
}

/// A key given on the command line, or read from the environment variable named.
fn key_from(given: Option<&String>, env: Option<&String>) -> Result<Option<KeyText>, CliError> {
    if let Some(var) = env {
        let v = std::env::var(var)
            .map_err(|_| CliError::Usage(format!("environment variable {var} is not set")))?;
        return Ok(Some(KeyText::new(v.trim())));
    }
    Ok(given.map(|k| KeyText::new(k.as_str())))
}

fn symmetric(f: &CommonFields) -> Result<AttestationMechanism, CliError> {
    Ok(AttestationMechanism::symmetric_key(
        key_from(f.primary_key.as_ref(), f.primary_key_env.as_ref())?,
        key_from(f.secondary_key.as_ref(), f.secondary_key_env.as_ref())?,
    ))
}

/// `dps enrollment`.
pub async fn enrollment(c: EnrollmentCommand) -> Result<(), CliError> {
    match c {
        EnrollmentCommand::Create {
            target,
            registration_id,
            attestation_type,
            endorsement_key,
            device_id,
            fields,
        } => {
            let attestation = match attestation_type {
                AttestationKind::Tpm => {
                    AttestationMechanism::tpm(endorsement_key.ok_or_else(|| {
                        CliError::Usage("tpm attestation needs --endorsement-key".into())
                    })?)
                }
                AttestationKind::X509 => {
                    AttestationMechanism::x509_client(read_pem(fields.certificate_path.as_ref())?)
                }
                AttestationKind::Symmetrickey => symmetric(&fields)?,
            };
            let s = shared(&fields)?;
            let mut e = IndividualEnrollment::new(registration_id, attestation);
            e.device_id = device_id;
            e.initial_twin = s.twin;
            e.iot_hubs = s.hubs;
            e.allocation_policy = s.allocation;
            e.provisioning_status = s.status;
            let mut out = target
                .client()?
                .create_or_update_enrollment(&e, fields.etag.as_deref())
                .await?;
            hide_keys(&mut out.attestation, fields.show_keys, "enrollment");
            print(&out)
        }
        EnrollmentCommand::Show {
            target,
            registration_id,
            show_keys,
        } => {
            let client = target.client()?;
            let mut e = client.get_enrollment(&registration_id).await?;
            if show_keys {
                e.attestation = client.enrollment_attestation(&registration_id).await?;
            }
            print(&e)
        }
        EnrollmentCommand::List { target, page_size } => {
            print(&target.client()?.list_enrollments(page_size).await?)
        }
        EnrollmentCommand::Delete {
            target,
            registration_id,
            etag,
        } => {
            target
                .client()?
                .delete_enrollment(&registration_id, etag.as_deref())
                .await?;
            println!("deleted enrollment {registration_id}");
            Ok(())
        }
    }
}

/// `dps group`.
pub async fn group(c: GroupCommand) -> Result<(), CliError> {
    match c {
        GroupCommand::Create {
            target,
            enrollment_group_id,
            attestation_type,
            ca_name,
            fields,
        } => {
            let attestation = match (attestation_type, ca_name) {
                (AttestationKind::Tpm, _) => {
                    return Err(CliError::Usage(
                        "enrollment groups do not support tpm".into(),
                    ));
                }
                (AttestationKind::X509, Some(ca)) => {
                    let mut a = AttestationMechanism::x509_signing("");
                    if let Some(x) = a.x509.as_mut() {
                        x.signing_certificates = None;
                        x.ca_references = Some(X509CaReferences {
                            primary: Some(ca),
                            secondary: None,
                        });
                    }
                    a
                }
                (AttestationKind::X509, None) => {
                    AttestationMechanism::x509_signing(read_pem(fields.certificate_path.as_ref())?)
                }
                (AttestationKind::Symmetrickey, _) => symmetric(&fields)?,
            };
            let s = shared(&fields)?;
            let mut g = EnrollmentGroup::new(enrollment_group_id, attestation);
            g.initial_twin = s.twin;
            g.iot_hubs = s.hubs;
            g.allocation_policy = s.allocation;
            g.provisioning_status = s.status;
            let mut out = target
                .client()?
                .create_or_update_group(&g, fields.etag.as_deref())
                .await?;
            hide_keys(&mut out.attestation, fields.show_keys, "group");
            print(&out)
        }
        GroupCommand::Show {
            target,
            enrollment_group_id,
            show_keys,
        } => {
            let client = target.client()?;
            let mut g = client.get_group(&enrollment_group_id).await?;
            if show_keys {
                g.attestation = client.group_attestation(&enrollment_group_id).await?;
            }
            print(&g)
        }
        GroupCommand::List { target, page_size } => {
            print(&target.client()?.list_groups(page_size).await?)
        }
        GroupCommand::Delete {
            target,
            enrollment_group_id,
            etag,
        } => {
            target
                .client()?
                .delete_group(&enrollment_group_id, etag.as_deref())
                .await?;
            println!("deleted enrollment group {enrollment_group_id}");
            Ok(())
        }
    }
}

/// `dps registration`.
pub async fn registration(c: RegistrationCommand) -> Result<(), CliError> {
    match c {
        RegistrationCommand::Show {
            target,
            registration_id,
        } => print(
            &target
                .client()?
                .get_registration_state(&registration_id)
                .await?,
        ),
        RegistrationCommand::List {
            target,
            enrollment_group_id,
        } => {
            let client = target.client()?;
            let mut all = Vec::new();
            let mut next: Option<String> = None;
            loop {
                let p = client
                    .query_group_registrations(&enrollment_group_id, Some(100), next.as_deref())
                    .await?;
                all.extend(p.items);
                match p.continuation {
                    Some(c) => next = Some(c),
                    None => break,
                }
            }
            print(&all)
        }
        RegistrationCommand::Delete {
            target,
            registration_id,
            etag,
        } => {
            target
                .client()?
                .delete_registration_state(&registration_id, etag.as_deref())
                .await?;
            println!("deleted registration {registration_id}");
            Ok(())
        }
    }
}
