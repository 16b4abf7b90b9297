//! The red wine quality data set (Cortez et al., UCI Machine Learning Repository; 1,599 wines,
//! 11 physico-chemical features, a quality score 3–8), as shipped inside the
//! `linfa-datasets` crate, turned into a binary task: is the quality 6 or better?
//!
//! Features are standardised with the mean and standard deviation of the whole data set (a
//! fixed, public preprocessing step shared by every node and by central training). Rows are
//! shuffled with a fixed seed, dealt round-robin to partitions, and each partition keeps its
//! last 20 % for evaluation.

/// One labelled example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Standardised features.
    pub features: Vec<f64>,
    /// 1.0 for "good" (quality ≥ 6), else 0.0.
    pub label: f64,
}

/// A partition's training and evaluation examples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// Training examples.
    pub train: Vec<Example>,
    /// Held-out evaluation examples.
    pub test: Vec<Example>,
}

/// Number of features.
pub const FEATURES: usize = 11;
/// Quality at or above which a wine counts as good.
const GOOD: usize = 6;
/// Seed of the fixed shuffle.
const SEED: u64 = 0x5eed_f10e;
/// Share of each partition held out for evaluation, in percent.
const TEST_PERCENT: usize = 20;

/// Partition parameters are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PartitionError(pub String);

/// All examples, standardised and shuffled with the fixed seed.
pub fn examples() -> Vec<Example> {
    let dataset = linfa_datasets::winequality();
    let mut rows: Vec<(Vec<f64>, usize)> = dataset
        .records
        .outer_iter()
        .zip(dataset.targets.iter())
        .map(|(row, &quality)| (row.to_vec(), quality))
        .collect();
    standardise(&mut rows);
    shuffle(&mut rows, SEED);
    rows.into_iter()
        .map(|(features, quality)| Example {
            features,
            label: if quality >= GOOD { 1.0 } else { 0.0 },
        })
        .collect()
}

/// The training and evaluation split of partition `partition_id` of `num_partitions`.
///
/// # Errors
///
/// [`PartitionError`] if `num_partitions` is 0 or `partition_id` is not below it.
pub fn partition(partition_id: usize, num_partitions: usize) -> Result<Split, PartitionError> {
    if num_partitions == 0 || partition_id >= num_partitions {
        return Err(PartitionError(format!(
            "partition-id {partition_id} is not in 0..{num_partitions}"
        )));
    }
    let mine: Vec<Example> = examples()
        .into_iter()
        .enumerate()
        .filter(|(index, _)| index % num_partitions == partition_id)
        .map(|(_, example)| example)
        .collect();
    let test_len = mine.len() * TEST_PERCENT / 100;
    let mut train = mine;
    let test = train.split_off(train.len() - test_len);
    Ok(Split { train, test })
}

/// Every partition's split merged: the data a central trainer would see.
///
/// # Errors
///
/// As [`partition`].
pub fn pooled(num_partitions: usize) -> Result<Split, PartitionError> {
    let mut all = Split::default();
    for id in 0..num_partitions {
        let split = partition(id, num_partitions)?;
        all.train.extend(split.train);
        all.test.extend(split.test);
    }
    Ok(all)
}

fn standardise(rows: &mut [(Vec<f64>, usize)]) {
    #[allow(clippy::cast_precision_loss)] // 1,599 rows
    let n = rows.len() as f64;
    for column in 0..FEATURES {
        let mean = rows.iter().map(|(f, _)| f[column]).sum::<f64>() / n;
        let variance = rows
            .iter()
            .map(|(f, _)| (f[column] - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = variance.sqrt().max(f64::EPSILON);
        for (features, _) in rows.iter_mut() {
            features[column] = (features[column] - mean) / std;
        }
    }
}

/// Fisher–Yates with splitmix64, so the order never depends on a crate's RNG version.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        #[allow(clippy::cast_possible_truncation)] // the modulus is an index
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_set_is_the_red_wine_table() {
        let all = examples();
        assert_eq!(all.len(), 1599);
        assert!(all.iter().all(|e| e.features.len() == FEATURES));
        let good = all.iter().filter(|e| e.label == 1.0).count();
        // 855 of the 1,599 red wines have quality 6 or more.
        assert_eq!(good, 855);
    }

    #[test]
    fn partitions_are_disjoint_and_cover_everything() {
        let a = partition(0, 2).expect("valid");
        let b = partition(1, 2).expect("valid");
        let total = a.train.len() + a.test.len() + b.train.len() + b.test.len();
        assert_eq!(total, 1599);
        assert_eq!(a.test.len(), (a.train.len() + a.test.len()) / 5);
        assert_ne!(a.train[0], b.train[0]);
        assert_eq!(
            pooled(2).expect("valid").train.len(),
            a.train.len() + b.train.len()
        );
        assert!(partition(2, 2).is_err());
        assert!(partition(0, 0).is_err());
    }
}
