//! Answers as aligned text tables for a terminal.

use std::fmt::Write;

use tapio_model::format_time;

use crate::Answer;

/// Renders `answer` as text: a title line, then aligned columns.
pub(crate) fn render(answer: &Answer) -> String {
    let mut out = String::new();
    match answer {
        Answer::Why { entity, causes } => {
            if causes.is_empty() {
                let _ = writeln!(out, "No root-cause chain passes through {entity}.");
            }
            for (n, cause) in causes.iter().enumerate() {
                if n > 0 {
                    out.push('\n');
                }
                let _ = writeln!(
                    out,
                    "{} {} ({}%), current since {}",
                    cause.kind,
                    cause.root_cause,
                    cause.confidence,
                    format_time(cause.since)
                );
                let _ = writeln!(out, "{}", cause.explanation);
                let rows = cause
                    .chain
                    .iter()
                    .enumerate()
                    .map(|(i, hop)| {
                        vec![
                            i.to_string(),
                            format_time(hop.time),
                            hop.entity.clone(),
                            hop.fact_id.clone(),
                            hop.what.clone(),
                        ]
                    })
                    .collect();
                out.push_str(&columns(&["#", "TIME", "ENTITY", "EVIDENCE", "WHAT"], rows));
            }
        }
        Answer::BlastRadius { entity, impacts } => {
            let _ = writeln!(out, "Blast radius of {entity}: {} entities", impacts.len());
            let rows = impacts
                .iter()
                .map(|impact| {
                    vec![
                        impact.distance.to_string(),
                        impact.entity.clone(),
                        impact.how.clone(),
                        impact.evidence.join(" → "),
                    ]
                })
                .collect();
            out.push_str(&columns(&["DISTANCE", "ENTITY", "HOW", "EVIDENCE"], rows));
        }
        Answer::Timeline { entity, events } => {
            let _ = writeln!(out, "Timeline of {entity}: {} facts", events.len());
            let rows = events
                .iter()
                .map(|event| {
                    vec![
                        format_time(event.time),
                        event.entity.clone(),
                        event.fact_id.clone(),
                        event.what.clone(),
                    ]
                })
                .collect();
            out.push_str(&columns(&["TIME", "ENTITY", "FACT", "WHAT"], rows));
        }
        Answer::Path {
            from,
            to,
            nodes,
            steps,
        } => {
            if nodes.is_empty() {
                let _ = writeln!(out, "No path between {from} and {to}.");
            } else {
                let _ = writeln!(
                    out,
                    "Path from {from} to {to}: {} relationships",
                    steps.len()
                );
                let rows = steps
                    .iter()
                    .map(|step| {
                        vec![
                            step.from.clone(),
                            step.relation.clone(),
                            step.to.clone(),
                            step.fact_id.clone(),
                            step.what.clone(),
                        ]
                    })
                    .collect();
                out.push_str(&columns(
                    &["FROM", "RELATION", "TO", "EVIDENCE", "WHAT"],
                    rows,
                ));
            }
        }
    }
    out
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn columns(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Impact;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let text = columns(
            &["A", "LONGER", "LAST"],
            vec![
                vec!["xx".into(), "y".into(), "z".into()],
                vec!["x".into(), "yyyyyyy".into(), "zz".into()],
            ],
        );
        assert_eq!(text, "A   LONGER   LAST\nxx  y        z\nx   yyyyyyy  zz\n");
    }

    #[test]
    fn an_empty_answer_says_so() {
        let answer = Answer::Why {
            entity: "pod/default/p".into(),
            causes: Vec::new(),
        };
        assert!(render(&answer).starts_with("No root-cause chain passes through pod/default/p."));
        let answer = Answer::BlastRadius {
            entity: "pod/default/p".into(),
            impacts: vec![Impact {
                entity: "container/c".into(),
                kind: "container".into(),
                how: "inside".into(),
                distance: 1,
                evidence: vec!["kubernetes/cluster/1".into()],
            }],
        };
        assert_eq!(
            render(&answer),
            "Blast radius of pod/default/p: 1 entities\n\
             DISTANCE  ENTITY       HOW     EVIDENCE\n\
             1         container/c  inside  kubernetes/cluster/1\n"
        );
    }
}
