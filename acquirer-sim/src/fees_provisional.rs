//! Provisional: replaced by `paystream_domain::fees` once the ledger lands.
use paystream_domain::money::{Amount, Currency};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeSchedule {
    percent_bps: u32,
    fixed: i64,
}

impl Default for FeeSchedule {
    fn default() -> Self {
        Self {
            percent_bps: 290,
            fixed: 30,
        }
    }
}

impl FeeSchedule {
    pub fn new(percent_bps: u32, fixed: i64) -> Result<Self, ()> {
        if percent_bps > 10_000 || fixed < 0 {
            return Err(());
        }
        Ok(Self { percent_bps, fixed })
    }

    pub fn percent_bps(&self) -> u32 {
        self.percent_bps
    }

    pub fn fixed(&self) -> Amount {
        Amount::from_stored(self.fixed)
    }

    pub fn fee(&self, amount: Amount, _currency: Currency) -> Amount {
        let scaled = i128::from(amount.minor_units()) * i128::from(self.percent_bps);
        let fee = (scaled + 5_000) / 10_000 + i128::from(self.fixed);
        let capped = fee.min(i128::from(amount.minor_units()));
        Amount::from_stored(i64::try_from(capped).unwrap_or(amount.minor_units()))
    }
}
