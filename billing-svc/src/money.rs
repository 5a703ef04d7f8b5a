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

/// The active ISO 4217 currency codes (2025): what a plan may be priced in.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF", "BMD", "BND", "BOB",
    "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK",
    "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL",
    "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG",
    "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC",
    "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// Whether `code` is an active ISO 4217 currency code, in capitals.
pub fn is_iso_currency(code: &str) -> bool {
    ISO_4217.binary_search(&code).is_ok()
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

    #[test]
    fn currencies_are_the_iso_codes_in_capitals() {
        assert!(super::ISO_4217.windows(2).all(|w| w[0] < w[1]), "sorted, each once: binary search");
        for ok in ["INR", "USD", "EUR", "JPY"] {
            assert!(super::is_iso_currency(ok), "{ok}");
        }
        for bad in ["inr", "XXX", "RS", "INRR", ""] {
            assert!(!super::is_iso_currency(bad), "{bad}");
        }
    }
}
