//! `p12-operator crd`: which CustomResourceDefinitions to print.

use clap::Args;

#[derive(Args, Debug)]
pub struct CrdArgs {
    /// Print only this CRD, by plural name; without it, every CRD in turn.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::api::CRDS))]
    pub name: Option<String>,
}

impl CrdArgs {
    /// The plural names to print, in order.
    pub fn names(&self) -> Vec<&str> {
        match &self.name {
            Some(n) => vec![n.as_str()],
            None => crate::api::CRDS.to_vec(),
        }
    }
}
