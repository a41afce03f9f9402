//! Deterministic stratified splits and the binary views of a multi-class set.

use super::{Dataset, DatasetError};
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// A binary task carved out of a multi-class set. Label 1 is the "positive" side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BinaryTask {
    /// Only samples of classes `negative` and `positive`; others are dropped.
    Pair {
        /// Becomes label 0.
        negative: u32,
        /// Becomes label 1.
        positive: u32,
    },
    /// Class `positive` against every other class.
    OneVsRest {
        /// Becomes label 1; all other classes become 0.
        positive: u32,
    },
    /// A set of classes against the rest (e.g. odd digits against even ones).
    Groups {
        /// Classes that become label 1.
        positive: Vec<u32>,
    },
}

/// The learning task: the original classes or a binary view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Task {
    /// All classes of the data set.
    Multiclass,
    /// A two-class view.
    Binary(BinaryTask),
}

impl Task {
    /// Parses `multiclass`, `pair:A,B`, `one-vs-rest:K`, `groups:A,B,...` or `odd-even`
    /// (odd classes positive).
    pub fn parse(spec: &str) -> Result<Self, DatasetError> {
        let bad = |reason: String| DatasetError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let nums: Vec<u32> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',')
                .map(|s| s.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("class list: {e}")))?
        };
        match (kind, nums.as_slice()) {
            ("multiclass", []) => Ok(Task::Multiclass),
            ("pair", [a, b]) if a != b => Ok(Task::Binary(BinaryTask::Pair {
                negative: *a,
                positive: *b,
            })),
            ("one-vs-rest", [k]) => Ok(Task::Binary(BinaryTask::OneVsRest { positive: *k })),
            ("groups", list) if !list.is_empty() => Ok(Task::Binary(BinaryTask::Groups {
                positive: list.to_vec(),
            })),
            ("odd-even", []) => Ok(Task::Binary(BinaryTask::Groups {
                positive: vec![1, 3, 5, 7, 9],
            })),
            _ => Err(bad(
                "expected multiclass, pair:A,B (A != B), one-vs-rest:K, groups:A,B,.. or odd-even"
                    .into(),
            )),
        }
    }

    /// True for binary views.
    pub fn is_binary(&self) -> bool {
        matches!(self, Task::Binary(_))
    }

    /// Applies the view. Fails when a named class does not exist or a side would be empty.
    pub fn apply(&self, data: &Dataset) -> Result<Dataset, DatasetError> {
        let k = data.num_classes() as u32;
        let check = |c: u32| {
            if c >= k {
                Err(DatasetError::Unusable(format!(
                    "task names class {c} but the data has classes 0..{}",
                    k - 1
                )))
            } else {
                Ok(())
            }
        };
        let out = match self {
            Task::Multiclass => return Ok(data.clone()),
            Task::Binary(BinaryTask::Pair { negative, positive }) => {
                check(*negative)?;
                check(*positive)?;
                let (n, p) = (*negative, *positive);
                data.relabel(2, |l| {
                    if l == n {
                        Some(0)
                    } else if l == p {
                        Some(1)
                    } else {
                        None
                    }
                })?
            }
            Task::Binary(BinaryTask::OneVsRest { positive }) => {
                check(*positive)?;
                let p = *positive;
                data.relabel(2, |l| Some(u32::from(l == p)))?
            }
            Task::Binary(BinaryTask::Groups { positive }) => {
                for &c in positive {
                    check(c)?;
                }
                data.relabel(2, |l| Some(u32::from(positive.contains(&l))))?
            }
        };
        if out.class_counts().contains(&0) {
            return Err(DatasetError::Unusable(format!(
                "binary view {self:?} leaves one side without samples"
            )));
        }
        Ok(out)
    }
}

/// How to split: fractions for validation and test, the rest is training; a seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSpec {
    /// Seed of the shuffle inside each class.
    pub seed: u64,
    /// Fraction of each class put in the validation split.
    pub val_fraction: f64,
    /// Fraction of each class put in the test split.
    pub test_fraction: f64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            seed: 0,
            val_fraction: 0.2,
            test_fraction: 0.2,
        }
    }
}

/// The three splits of one task.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Fits models.
    pub train: Dataset,
    /// Early stopping, calibration, threshold quantiles.
    pub val: Dataset,
    /// Reported figures only.
    pub test: Dataset,
}

impl SplitSpec {
    /// Stratified split: each class is shuffled with the seed and cut by the fractions, so the
    /// class balance is the same in every split and the result depends only on data and seed.
    pub fn split(&self, data: &Dataset) -> Result<Splits, DatasetError> {
        let (v, t) = (self.val_fraction, self.test_fraction);
        if !(0.0..1.0).contains(&v) || !(0.0..1.0).contains(&t) || v + t >= 1.0 {
            return Err(DatasetError::BadSpec {
                spec: format!("val={v}, test={t}"),
                reason: "fractions must be in [0, 1) and leave room for training".into(),
            });
        }
        let mut rng = SplitMix64::new(self.seed);
        let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for class in 0..data.num_classes() as u32 {
            let mut idx: Vec<usize> = (0..data.len())
                .filter(|&i| data.labels()[i] == class)
                .collect();
            rng.shuffle(&mut idx);
            let n = idx.len();
            let n_test = (n as f64 * t).round() as usize;
            let n_val = (n as f64 * v).round() as usize;
            test.extend_from_slice(&idx[..n_test]);
            val.extend_from_slice(&idx[n_test..n_test + n_val]);
            train.extend_from_slice(&idx[n_test + n_val..]);
        }
        for (name, part) in [("train", &train), ("validation", &val), ("test", &test)] {
            if part.is_empty() {
                return Err(DatasetError::Unusable(format!(
                    "the {name} split is empty ({} samples in all)",
                    data.len()
                )));
            }
        }
        train.sort_unstable();
        val.sort_unstable();
        test.sort_unstable();
        Ok(Splits {
            train: data.subset(&train),
            val: data.subset(&val),
            test: data.subset(&test),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, classes: u32) -> Dataset {
        let labels: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
        let features = (0..n).map(|i| i as f32).collect();
        Dataset::new(features, labels, vec![1], classes as usize).unwrap()
    }

    #[test]
    fn split_is_deterministic_stratified_and_disjoint() {
        let data = toy(100, 4);
        let spec = SplitSpec::default();
        let a = spec.split(&data).unwrap();
        let b = spec.split(&data).unwrap();
        assert_eq!(a.test, b.test);
        assert_eq!(a.test.class_counts(), vec![5, 5, 5, 5]);
        assert_eq!(a.train.len() + a.val.len() + a.test.len(), 100);
        let mut all: Vec<f32> = [a.train.features(), a.val.features(), a.test.features()].concat();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, (0..100).map(|i| i as f32).collect::<Vec<_>>());
        let other = SplitSpec { seed: 1, ..spec }.split(&data).unwrap();
        assert_ne!(other.test, a.test);
    }

    #[test]
    fn binary_views_relabel_and_filter() {
        let data = toy(30, 10);
        let pair = Task::parse("pair:3,8").unwrap().apply(&data).unwrap();
        assert_eq!(pair.len(), 6);
        assert_eq!(pair.class_counts(), vec![3, 3]);
        let ovr = Task::parse("one-vs-rest:0").unwrap().apply(&data).unwrap();
        assert_eq!(ovr.class_counts(), vec![27, 3]);
        let odd = Task::parse("odd-even").unwrap().apply(&data).unwrap();
        assert_eq!(odd.class_counts(), vec![15, 15]);
        assert_eq!(odd.labels()[..4], [0, 1, 0, 1]);
    }

    #[test]
    fn bad_task_specs_are_refused_with_the_reason() {
        assert!(Task::parse("pair:3,3").is_err());
        assert!(Task::parse("pair:x,3")
            .unwrap_err()
            .to_string()
            .contains("class list"));
        let err = Task::parse("pair:3,12")
            .unwrap()
            .apply(&toy(20, 10))
            .unwrap_err();
        assert!(err.to_string().contains("class 12"), "{err}");
    }
}
