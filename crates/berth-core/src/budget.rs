//! The per-snapshot size budget: when the files add up to more than the budget, the largest
//! are left out (which keeps the most files) and listed, never dropped silently.

/// Which files the budget leaves out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BudgetPlan {
    /// Indices (into the input) of the files left out, largest first.
    pub skipped: Vec<usize>,
    /// Bytes of the files kept.
    pub kept_bytes: u64,
}

/// Plans which files to leave out so the kept ones fit into `budget` bytes.
pub fn plan(sizes: &[u64], budget: Option<u64>) -> BudgetPlan {
    let total: u64 = sizes.iter().sum();
    let Some(budget) = budget.filter(|b| total > *b) else {
        return BudgetPlan { skipped: vec![], kept_bytes: total };
    };
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|a, b| sizes[*b].cmp(&sizes[*a]).then(a.cmp(b)));
    let mut kept = total;
    let mut skipped = Vec::new();
    for i in order {
        if kept <= budget {
            break;
        }
        kept -= sizes[i];
        skipped.push(i);
    }
    BudgetPlan { skipped, kept_bytes: kept }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_files_go_first() {
        assert_eq!(plan(&[5, 50, 10], None).skipped, Vec::<usize>::new());
        assert_eq!(plan(&[5, 50, 10], Some(65)).skipped, Vec::<usize>::new());
        assert_eq!(plan(&[5, 50, 10], Some(20)), BudgetPlan { skipped: vec![1], kept_bytes: 15 });
        assert_eq!(plan(&[5, 50, 10], Some(6)), BudgetPlan { skipped: vec![1, 2], kept_bytes: 5 });
        assert_eq!(plan(&[5, 50, 10], Some(0)).kept_bytes, 0);
    }
}
