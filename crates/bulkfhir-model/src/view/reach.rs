//! Which elements of a resource a view can read: the FHIRPath analysis of
//! [`crate::fhirpath::reach`] applied to the view's `where` criteria, and to its selects as the
//! view runs them (a `forEach` makes what its path finds the focus of the nested parts).

use super::{Iteration, Select, ViewDefinition};
use crate::fhirpath::reach::{Gives, Reads, Walk, Whole};

/// The elements `view` can read, or `Whole` when it can read the resource whole.
pub(super) fn reads(view: &ViewDefinition) -> Result<Reads, Whole> {
    let mut walk = Walk::new(view.resource.as_str())?;
    let root = Gives::resource();
    for w in &view.wheres {
        walk.value(&w.expr, &root, &root)?;
    }
    for select in &view.selects {
        select_reads(&mut walk, select, &root)?;
    }
    Ok(walk.reads)
}

/// A select over instances of `focus`.
fn select_reads(walk: &mut Walk<'_>, select: &Select, focus: &Gives) -> Result<(), Whole> {
    let inner = match &select.iteration {
        Iteration::None => focus.clone(),
        // Each item found becomes the focus: what the nested parts read of it is kept.
        Iteration::ForEach(path) | Iteration::ForEachOrNull(path) => {
            walk.expr(&path.expr, focus, focus)?
        }
        // The paths are followed again from what they find: keep what they find whole.
        Iteration::Repeat(paths) => {
            for path in paths {
                walk.value(&path.expr, focus, focus)?;
            }
            Gives::Other
        }
    };
    for column in &select.columns {
        walk.value(&column.path.expr, &inner, &inner)?;
    }
    for nested in select.selects.iter().chain(&select.union_all) {
        select_reads(walk, nested, &inner)?;
    }
    Ok(())
}
