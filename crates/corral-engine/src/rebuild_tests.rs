//! Unit tests of the rebuild's extent arithmetic and layer ordering.

use super::*;

fn e(offset: u64, len: u64) -> Extent {
    Extent { offset, len }
}

#[test]
fn subtract_and_covers_handle_overlaps() {
    let a = [e(0, 100), e(200, 100)];
    let b = [e(50, 20), e(90, 150)];
    assert_eq!(subtract(&a, &b), vec![e(0, 50), e(70, 20), e(240, 60)]);
    assert!(covers(&b, e(95, 100)));
    assert!(!covers(&b, e(40, 20)));
    assert!(covers(&[e(0, 10), e(10, 10)], e(5, 10)));
}

#[test]
fn windows_span_at_most_a_batch_and_keep_every_byte() {
    let extents = [e(0, 4096), e(8192, 4096), e(1 << 20, 3 << 20), e(10 << 20, 4096)];
    let ws = windows(&extents, 1 << 20);
    let mut total = 0;
    for w in &ws {
        let span = w.last().map(|l| l.end()).unwrap_or(0) - w.first().map(|f| f.offset).unwrap_or(0);
        assert!(span <= 1 << 20, "{w:?}");
        total += w.iter().map(|x| x.len).sum::<u64>();
    }
    assert_eq!(total, extents.iter().map(|x| x.len).sum::<u64>());
    assert_eq!(ws.len(), 5);
}

#[test]
fn layers_are_ordered_parents_first() {
    let info = |n: &str, p: Option<&str>| SnapshotInfo {
        name: n.into(),
        parent: p.map(String::from),
        ..Default::default()
    };
    let ordered = root_first(vec![info("c", Some("b")), info("a", None), info("b", Some("a"))]);
    let names: Vec<_> = ordered.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}
