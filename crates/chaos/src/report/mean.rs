//! The mean of several runs' reports, for `--seeds N`.
//!
//! Why through JSON: a run report has dozens of figures in nested maps
//! (steps, fault kinds, counters), and every one of them should be averaged
//! the same way; doing it field by field would let a new figure silently
//! miss its mean. So the reports are serialised, every number is averaged
//! where it sits (integers stay integers, rounded), and the result is read
//! back as a report. A figure present in some seeds only (a fault kind that
//! one seed never drew) is averaged over the seeds that have it; arrays
//! (the timeline) are averaged element by element over their common length.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

/// The mean of `reports` (`None` when there is none).
pub fn mean<T: Serialize + DeserializeOwned>(reports: &[T]) -> Option<T> {
    let values: Vec<Value> = reports
        .iter()
        .map(|r| serde_json::to_value(r).expect("a report serialises"))
        .collect();
    let refs: Vec<&Value> = values.iter().collect();
    let merged = mean_values(&refs)?;
    Some(serde_json::from_value(merged).expect("the mean of reports is a report"))
}

fn mean_values(values: &[&Value]) -> Option<Value> {
    let first = *values.first()?;
    Some(match first {
        Value::Number(_) => {
            let numbers: Vec<&Number> = values.iter().filter_map(|v| v.as_number()).collect();
            let sum: f64 = numbers.iter().filter_map(|n| n.as_f64()).sum();
            let mean = sum / numbers.len() as f64;
            if numbers.iter().all(|n| n.is_u64()) {
                Value::from(mean.round() as u64)
            } else if numbers.iter().all(|n| n.is_i64()) {
                Value::from(mean.round() as i64)
            } else {
                Number::from_f64(mean).map_or(Value::Null, Value::Number)
            }
        }
        Value::Object(_) => {
            let mut keys: Vec<&String> = Vec::new();
            for v in values {
                if let Value::Object(map) = v {
                    for k in map.keys() {
                        if !keys.contains(&k) {
                            keys.push(k);
                        }
                    }
                }
            }
            let mut out = Map::new();
            for key in keys {
                let present: Vec<&Value> = values.iter().filter_map(|v| v.get(key)).collect();
                if let Some(v) = mean_values(&present) {
                    out.insert(key.clone(), v);
                }
            }
            Value::Object(out)
        }
        Value::Array(_) => {
            let len = values
                .iter()
                .map(|v| v.as_array().map_or(0, Vec::len))
                .min()
                .unwrap_or(0);
            Value::Array(
                (0..len)
                    .filter_map(|i| {
                        let items: Vec<&Value> = values.iter().filter_map(|v| v.get(i)).collect();
                        mean_values(&items)
                    })
                    .collect(),
            )
        }
        // Strings, booleans, null: the first seed's.
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct R {
        count: u64,
        rate: f64,
        name: String,
        kinds: BTreeMap<String, u64>,
        series: Vec<f64>,
    }

    #[test]
    fn every_number_is_averaged_where_it_sits() {
        let a = R {
            count: 10,
            rate: 0.5,
            name: "a".into(),
            kinds: [("x".to_owned(), 4), ("y".to_owned(), 1)].into(),
            series: vec![1.0, 2.0, 3.0],
        };
        let b = R {
            count: 13,
            rate: 1.0,
            name: "b".into(),
            kinds: [("x".to_owned(), 6)].into(),
            series: vec![3.0, 4.0],
        };
        let m = mean(&[a, b]).unwrap();
        assert_eq!(m.count, 12); // 11.5 rounded
        assert!((m.rate - 0.75).abs() < 1e-12);
        assert_eq!(m.name, "a");
        assert_eq!(m.kinds["x"], 5);
        assert_eq!(m.kinds["y"], 1, "averaged over the seeds that have it");
        assert_eq!(m.series, vec![2.0, 3.0]);
        assert!(mean::<R>(&[]).is_none());
    }
}
