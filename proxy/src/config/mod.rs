//! The proxy's config model: the plain-data [`Bootstrap`] a static YAML file
//! holds (and the xDS translation will produce), its loading with field-path
//! errors, and its validation. Compiling it into serving structures is the
//! job of `active`, `router` and `upstream`; this module owns no runtime
//! state and never touches sockets.

pub mod duration;
mod error;
pub mod load;
pub mod model;
pub mod validate;

pub use duration::Dur;
pub use error::{ConfigError, ConfigErrors};
pub use load::{load_file, parse_yaml};
pub use model::*;
pub use validate::{validate, validate_changes, Validated};
