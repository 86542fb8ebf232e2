//! Deterministic bank data: the same account and day always give the same transactions, so
//! overlapping windows return the same entries (with the same `hash`), as the real upstream's do.

use chrono::{Datelike, Days, NaiveDate};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The most days of data one answer holds, whatever window is asked for.
const MAX_DAYS: u64 = 400;

const NOTES: [(&str, &str); 8] = [
    ("UPI/PAYTM/GROCERY", "Groceries"),
    ("NEFT/SALARY/ACME CORP", "Salary"),
    ("ATM WDL", "Cash Withdrawal"),
    ("UPI/SWIGGY", "Food"),
    ("ACH/EMI/LOAN", "EMI"),
    ("IMPS/RENT", "Rent"),
    ("POS/FUEL STATION", "Fuel"),
    ("NEFT/REFUND", "Refund"),
];

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"|");
    }
    h.finalize().into()
}

fn u32_at(h: &[u8; 32], i: usize) -> u32 {
    u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]])
}

/// An account's transactions from `from` to `to`, inclusive, oldest first: `per_day` a day,
/// or with 0, from none to two depending on the day.
pub fn transactions(account_id: &str, from: NaiveDate, to: NaiveDate, per_day: u32) -> Vec<Value> {
    let mut out = vec![];
    let mut day = from.max(to - Days::new(MAX_DAYS));
    while day <= to {
        let date = day.to_string();
        let per_day = match per_day {
            0 => u32::from(digest(&[account_id, &date])[0] % 3),
            n => n,
        };
        for i in 0..per_day {
            let h = digest(&[account_id, &date, &i.to_string()]);
            let credit = h[1].is_multiple_of(3);
            let (note, category) = NOTES[h[2] as usize % NOTES.len()];
            let amount = (u32_at(&h, 4) % 5_000_000) as f64 / 100.0 + 1.0;
            let balance = (u32_at(&h, 8) % 90_000_000) as f64 / 100.0 + 1000.0;
            out.push(json!({
                "transaction_type": if credit { "credit" } else { "debit" },
                "amount": amount,
                "balance": balance,
                "date": format!("{date} {:02}:{:02}:{:02}", h[12] % 24, h[13] % 60, h[14] % 60),
                "transaction_note": note,
                "category": category,
                "hash": hex::encode(&h[16..]),
            }));
        }
        day = day + Days::new(1);
    }
    out
}

/// Credits and debits per calendar month.
pub fn monthly_analysis(transactions: &[Value]) -> Value {
    let mut months = serde_json::Map::new();
    for t in transactions {
        let date = t["date"].as_str().unwrap_or_default();
        let month = date.get(..7).unwrap_or_default().to_string();
        let entry = months.entry(month).or_insert_with(
            || json!({"total_credit": 0.0, "total_debit": 0.0, "transaction_count": 0}),
        );
        let key = if t["transaction_type"] == "credit" {
            "total_credit"
        } else {
            "total_debit"
        };
        let amount = t["amount"].as_f64().unwrap_or_default();
        entry[key] =
            json!(((entry[key].as_f64().unwrap_or_default() + amount) * 100.0).round() / 100.0);
        entry["transaction_count"] =
            json!(entry["transaction_count"].as_u64().unwrap_or_default() + 1);
    }
    Value::Object(months)
}

/// One consented account of a pull.
pub struct Account<'a> {
    pub account_id: &'a str,
    pub bank_name: &'a str,
    pub masked_account_number: &'a str,
    /// Transactions a day; 0: none to two, depending on the day.
    pub transactions_per_day: u32,
}

/// The Insights answer: docs/bankconnect.md §6.
pub fn insights(
    session_id: &str,
    link_id: &str,
    from: NaiveDate,
    to: NaiveDate,
    accounts: &[Account<'_>],
) -> Value {
    let mut all = vec![];
    let accounts: Vec<Value> = accounts
        .iter()
        .map(|a| {
            let txns = transactions(a.account_id, from, to, a.transactions_per_day);
            all.extend(txns.iter().cloned());
            let eod: serde_json::Map<String, Value> = txns
                .iter()
                .map(|t| {
                    (
                        t["date"].as_str().unwrap_or_default()[..10].to_string(),
                        t["balance"].clone(),
                    )
                })
                .collect();
            json!({
                "account_id": a.account_id,
                "data": {
                    "account_details": {
                        "account_number": a.masked_account_number,
                        "bank": a.bank_name,
                        "account_category": "individual",
                    },
                    "monthly_analysis": monthly_analysis(&txns),
                    "eod_balances": eod,
                    "predictors": {"month_count": from.month().abs_diff(to.month()) + 1},
                    "transactions": txns,
                }
            })
        })
        .collect();
    json!({
        "session_id": session_id,
        "link_id": link_id,
        "session_date_range": {"from_date": from.format("%d/%m/%Y").to_string(), "to_date": to.format("%d/%m/%Y").to_string()},
        "accounts": accounts,
        "aggregate_monthly_analysis": monthly_analysis(&all),
    })
}

/// The Transactions answer (its shape is not public; this one is plausible and stable).
pub fn transactions_answer(
    session_id: &str,
    from: NaiveDate,
    to: NaiveDate,
    accounts: &[Account<'_>],
) -> Value {
    let accounts: Vec<Value> = accounts
        .iter()
        .map(|a| json!({"account_id": a.account_id, "bank_name": a.bank_name, "transactions": transactions(a.account_id, from, to, a.transactions_per_day)}))
        .collect();
    json!({"session_id": session_id, "accounts": accounts})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn overlapping_windows_agree_on_shared_days() {
        let a = transactions("acc", d("2025-01-01"), d("2025-01-31"), 0);
        let b = transactions("acc", d("2025-01-15"), d("2025-02-15"), 0);
        let in_a: Vec<&Value> = a
            .iter()
            .filter(|t| t["date"].as_str().unwrap() >= "2025-01-15")
            .collect();
        let in_b: Vec<&Value> = b
            .iter()
            .filter(|t| t["date"].as_str().unwrap() < "2025-02-01")
            .collect();
        assert!(!in_a.is_empty());
        assert_eq!(in_a, in_b);
        for t in &a {
            for field in [
                "transaction_type",
                "amount",
                "balance",
                "date",
                "transaction_note",
                "category",
                "hash",
            ] {
                assert!(!t[field].is_null(), "{field} missing in {t}");
            }
        }
    }
}
