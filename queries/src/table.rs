//! Answers as aligned text tables for a terminal. The `WHAT` columns show the sentences the
//! answers carry, rendered from the graph's typed data with `tapio_model::render`.

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
                            hop.relation.as_str().to_owned(),
                            hop.entity.clone(),
                            hop.fact_id.clone(),
                            hop.what.clone(),
                        ]
                    })
                    .collect();
                out.push_str(&columns(
                    &["#", "TIME", "RELATION", "ENTITY", "EVIDENCE", "WHAT"],
                    rows,
                ));
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
    use crate::{Impact, cause};
    use tapio_model::render::{describe_chain, explain};
    use tapio_model::{
        Basis, Confidence, Correlation, CorrelationKind, Detail, FactId, Hop, Observed, Relation,
    };

    /// An OOM restart as the dataflow concludes it: the kill and the exit of a process, the
    /// container it stopped, and the container's pod.
    fn oom() -> Correlation {
        let process: tapio_model::EntityId = "process/n1/7/1700000000".parse().unwrap();
        let hop = |entity: &str, relation, seq, observed| Hop {
            entity: entity.parse().unwrap(),
            relation,
            fact_id: FactId::new("kernel", "n1", seq),
            time: 1_700_000_000_000_000_000 + seq * 1_000_000,
            observed,
        };
        let chain = vec![
            hop(
                "process/n1/7/1700000000",
                Relation::Start,
                1,
                Observed::OomKill {
                    comm: "worker".into(),
                    pid: 7,
                    memcg: "/kubepods/pod1".into(),
                    rss_pages: 4096,
                },
            ),
            hop(
                "process/n1/7/1700000000",
                Relation::FollowedBy,
                2,
                Observed::ProcessExit {
                    comm: "worker".into(),
                    exit_code: 0,
                    signal: 9,
                },
            ),
            hop(
                "container/c1",
                Relation::Caused,
                3,
                Observed::ContainerExit {
                    container_name: "app".into(),
                    exit_code: 137,
                    reason: "OOMKilled".into(),
                    restart_count: 1,
                },
            ),
            hop(
                "pod/default/p",
                Relation::OwnedBy,
                4,
                Observed::PodContainer {
                    container_name: "app".into(),
                },
            ),
        ];
        Correlation::new(
            CorrelationKind::OomRestart,
            process,
            chain,
            Detail::Sequence {
                steps: 3,
                span_ns: 2_000_000,
                within_ns: 60_000_000_000,
            },
            Confidence {
                percent: 95,
                basis: vec![Basis::EveryStepObserved, Basis::ContainerEndSaysOom],
            },
        )
    }

    #[test]
    fn a_cause_renders_the_same_text_as_the_in_process_renderer() {
        let correlation = oom();
        let data = serde_json::to_string(&correlation).unwrap();
        let cause = cause("c1".into(), &data, 5).unwrap();
        assert_eq!(cause.explanation, explain(&correlation));
        let what: Vec<String> = cause.chain.iter().map(|hop| hop.what.clone()).collect();
        assert_eq!(what, describe_chain(&correlation.chain));
        assert_eq!(
            (cause.kind.as_str(), cause.family.as_str(), cause.confidence),
            ("oom_restart", "sequence", 95)
        );
        let table = render(&Answer::Why {
            entity: "pod/default/p".into(),
            causes: vec![cause],
        });
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("oom_restart process/n1/7/1700000000 (95%), current since "),
            "{table}"
        );
        assert_eq!(lines[1], explain(&correlation));
        assert!(lines[2].starts_with("#  TIME"), "{table}");
        assert!(
            lines[5].contains("caused")
                && lines[5].contains("container/c1")
                && lines[5]
                    .ends_with("container app exited with code 137 (OOMKilled), restart count 1"),
            "{table}"
        );
        assert!(
            lines[6].ends_with("runs container app (container/c1)"),
            "{table}"
        );
    }

    #[test]
    fn evidence_renders_with_the_hop_before_when_the_graph_has_it() {
        let observed = serde_json::to_string(&Observed::OwnerReference).unwrap();
        let (typed, with) = crate::evidence(
            "path",
            "replicaset/default/r",
            "kubernetes/cluster/2",
            7,
            &observed,
            Some("pod/default/p"),
        )
        .unwrap();
        assert_eq!(typed, Observed::OwnerReference);
        assert_eq!(with, "owner of pod/default/p");
        let (_, without) = crate::evidence(
            "timeline",
            "replicaset/default/r",
            "kubernetes/cluster/2",
            7,
            &observed,
            None,
        )
        .unwrap();
        assert_eq!(without, "named its owner in an owner reference");
        let error = crate::evidence(
            "timeline",
            "replicaset/default/r",
            "kubernetes/cluster/2",
            7,
            "\"a_later_observation\"",
            None,
        )
        .unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
    }

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
