//! Amounts of money: an integer in the currency's minor unit (paise, cents)
//! with its currency, never a float and never an amount without its
//! currency.
use std::fmt;

/// An amount in `currency`'s minor unit, as the gateway and the database
/// hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money<'a> {
    pub minor: i64,
    pub currency: &'a str,
}

impl Money<'_> {
    /// The same amount in the same currency (ISO codes compare without
    /// regard to case: gateways differ in how they spell them).
    pub fn same_as(&self, other: Money<'_>) -> bool {
        self.minor == other.minor && self.currency.eq_ignore_ascii_case(other.currency)
    }
}

/// `<minor> <currency>`, as messages and discrepancy details spell it.
impl fmt::Display for Money<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::Money;

    #[test]
    fn currencies_compare_without_case_and_amounts_exactly() {
        let inr = Money { minor: 49900, currency: "INR" };
        assert!(inr.same_as(Money { minor: 49900, currency: "inr" }));
        assert!(!inr.same_as(Money { minor: 49901, currency: "INR" }));
        assert!(!inr.same_as(Money { minor: 49900, currency: "USD" }));
        assert_eq!(inr.to_string(), "49900 INR");
    }
}
