//! The "auto"-or-number hyperparameter flags, shared by `hone train` and
//! `hone data estimate` so both spell them the same way and resolve them
//! through the one rule in `hone_data::hparams`.

use hone_data::hparams::Overrides;

/// A value that may be "auto" (`None`).
#[derive(Debug, Clone, Copy)]
pub struct Auto<T>(pub Option<T>);

/// Parses "auto" (any case) or a number.
pub fn parse_auto<T: std::str::FromStr>(s: &str) -> Result<Auto<T>, String>
where
    T::Err: std::fmt::Display,
{
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Auto(None));
    }
    s.parse()
        .map(|v| Auto(Some(v)))
        .map_err(|e| format!("expected \"auto\" or a number: {e}"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct HyperparameterArgs {
    /// Epochs, or "auto".
    #[arg(long, env = "HONE_EPOCHS", default_value = "auto", value_parser = parse_auto::<u32>)]
    pub epochs: Auto<u32>,
    /// Examples per optimizer step, or "auto".
    #[arg(long, env = "HONE_BATCH_SIZE", default_value = "auto", value_parser = parse_auto::<u32>)]
    pub batch_size: Auto<u32>,
    /// Learning rate = the auto rate for the method and model size × this multiplier (1 = auto's rate, as on OpenAI), or "auto".
    #[arg(long, env = "HONE_LR_MULTIPLIER", default_value = "auto", value_parser = parse_auto::<f64>)]
    pub lr_multiplier: Auto<f64>,
}

impl HyperparameterArgs {
    /// The user's explicit values, with `beta` for DPO.
    pub fn overrides(&self, beta: Option<f64>) -> Overrides {
        Overrides {
            n_epochs: self.epochs.0,
            batch_size: self.batch_size.0,
            learning_rate_multiplier: self.lr_multiplier.0,
            beta,
            lr_schedule: None,
        }
    }
}
