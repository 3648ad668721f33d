//! What the line needs before a fixture starts: the products, each fixture checked against its
//! product, the TPM trust store. Everything here is read once at start and then shared.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, FixtureConfig};
use crate::enroll::profile::{self, Attestation, Product, ProfileError};
use crate::home::Home;
use crate::ids::{FixtureName, StationId};

/// Why the line cannot start. Nothing runs with a bad line setup.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The product directory or a profile is bad.
    #[error("product profiles")]
    Products(#[source] ProfileError),
    /// A fixture names a product that has no profile.
    #[error("fixture {fixture}: product {product:?} has no profile in {dir} (known: {known})")]
    UnknownProduct {
        /// Fixture.
        fixture: String,
        /// Product named.
        product: String,
        /// Where profiles are read.
        dir: std::path::PathBuf,
        /// Products present.
        known: String,
    },
    /// A fixture lacks what its product's attestation needs.
    #[error("fixture {fixture}: product {product} ({kind}) needs {what}")]
    FixtureIncomplete {
        /// Fixture.
        fixture: String,
        /// Product.
        product: String,
        /// Attestation kind.
        kind: &'static str,
        /// The missing key.
        what: &'static str,
    },
    /// A product names a DPS target that is not configured.
    #[error(
        "product {product}: dps_target {target:?} is not configured (add [dps.targets.{target}])"
    )]
    UnknownTarget {
        /// Product.
        product: String,
        /// Target named.
        target: String,
    },
    /// No such fixture.
    #[error("no fixture {0:?} in the configuration ([fixtures.{0}])")]
    UnknownFixture(String),
}

/// The line as configured: products and fixtures, checked against each other.
#[derive(Debug, Clone)]
pub struct LineSetup {
    /// The station home.
    pub home: Home,
    /// The configuration.
    pub cfg: Arc<Config>,
    /// This station's id.
    pub station: StationId,
    /// Products by name.
    pub products: BTreeMap<String, Arc<Product>>,
}

impl LineSetup {
    /// Loads the products and checks every fixture against its product.
    pub fn load(home: &Home, cfg: &Config) -> Result<Self, SetupError> {
        let dir = home.resolve(&cfg.line.products_dir);
        let products: BTreeMap<String, Arc<Product>> = if dir.exists() {
            profile::load_dir(&dir)
                .map_err(SetupError::Products)?
                .into_iter()
                .map(|p| (p.name.as_str().to_owned(), Arc::new(p)))
                .collect()
        } else {
            BTreeMap::new()
        };
        for (name, p) in &products {
            if !cfg.dps.targets.contains_key(&p.profile.dps_target) {
                return Err(SetupError::UnknownTarget {
                    product: name.clone(),
                    target: p.profile.dps_target.clone(),
                });
            }
        }
        for (name, f) in &cfg.fixtures {
            let p = products
                .get(&f.product)
                .ok_or_else(|| SetupError::UnknownProduct {
                    fixture: name.clone(),
                    product: f.product.clone(),
                    dir: dir.clone(),
                    known: if products.is_empty() {
                        "none".into()
                    } else {
                        products.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                })?;
            check_fixture(name, f, p, cfg)?;
        }
        Ok(Self {
            home: home.clone(),
            cfg: Arc::new(cfg.clone()),
            station: cfg.station_id(),
            products,
        })
    }

    /// The fixture called `name`, with its product.
    pub fn fixture(
        &self,
        name: &str,
    ) -> Result<(FixtureName, &FixtureConfig, Arc<Product>), SetupError> {
        let f = self
            .cfg
            .fixtures
            .get(name)
            .ok_or_else(|| SetupError::UnknownFixture(name.to_owned()))?;
        let fixture = FixtureName::new(name.to_owned())
            .map_err(|_| SetupError::UnknownFixture(name.to_owned()))?;
        let product = self
            .products
            .get(&f.product)
            .cloned()
            .ok_or_else(|| SetupError::UnknownFixture(name.to_owned()))?;
        Ok((fixture, f, product))
    }
}

fn check_fixture(
    name: &str,
    f: &FixtureConfig,
    p: &Product,
    cfg: &Config,
) -> Result<(), SetupError> {
    let kind = p.profile.attestation.kind();
    let missing = |what| SetupError::FixtureIncomplete {
        fixture: name.to_owned(),
        product: p.name.as_str().to_owned(),
        kind,
        what,
    };
    match &p.profile.attestation {
        Attestation::Tpm => {
            if f.tcti.is_none() && cfg.tpm.tcti.is_none() {
                return Err(missing("a TPM: `tcti` in the fixture (or tpm.tcti)"));
            }
        }
        Attestation::X509Link | Attestation::SymmetricIndividual | Attestation::SymmetricGroup => {
            if f.serial_port.is_none() {
                return Err(missing("a device link: `serial_port` in the fixture"));
            }
        }
        Attestation::X509Pkcs11 { .. } => {}
    }
    Ok(())
}
