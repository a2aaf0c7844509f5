//! The pipeline's topology, declared once: its stages, what each reads and writes, how many
//! instances it runs, and where results leave the pipeline. The operators, topics and sinks are
//! declared here; each source plug-in declares its own stage, and the components' registry puts
//! them together (`clickpulse_components::PIPELINE`). `demo`, `run`, `chaos` and the tests take
//! the stage list and the consumers of each topic from that, and `GET /api/topology` serves it
//! to the pipeline view, which draws its diagram from it.

use serde::Serialize;

use crate::topics::Topic;

/// What a stage is to the data flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Brings events in from outside (a log, HTTP requests).
    Source,
    /// An operator: reads topics, writes topics or sinks.
    Operator,
}

/// How many instances of a stage run at once in distributed mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    /// Any number, splitting the input partitions in a consumer group.
    Group,
    /// One active instance holding a lease; others wait as standbys.
    SingleActive,
    /// Any number, each doing all of the work (HTTP instances behind a load balancer).
    Replicated,
}

/// One stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Its name: in metrics, `/api/stats`, `clickpulse run --stage`, consumer groups.
    pub name: &'static str,
    /// Source or operator.
    pub kind: StageKind,
    /// What it does, in a sentence (the pipeline view's tooltip).
    pub description: &'static str,
    /// The topics it reads, in the order it polls them.
    pub inputs: &'static [Topic],
    /// The topics it writes.
    pub outputs: &'static [Topic],
    /// Where its results leave the pipeline ([`Sink::name`]s).
    pub sinks: &'static [&'static str],
    /// Whether records it cannot process go to the dead-letter topic.
    pub dead_letters: bool,
    /// How it scales in distributed mode.
    pub instances: Instances,
}

/// One topic of a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TopicNode {
    /// The topic (served as its logical name; `[kafka.topics]` maps it to a physical one).
    pub name: Topic,
    /// Whether it is the dead-letter topic.
    pub dead: bool,
    /// Whether it is a side channel between stages of one column (the alerts: the pipeline
    /// view draws it beside its writer).
    pub side: bool,
}

/// Where results leave the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sink {
    /// Its name.
    pub name: &'static str,
    /// What the pipeline view calls it.
    pub label: &'static str,
    /// The page that shows it.
    pub href: &'static str,
    /// The link's text.
    pub link_text: &'static str,
}

/// The whole pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Every stage, sources first, in data-flow order.
    pub stages: Vec<Stage>,
    /// Every topic.
    pub topics: &'static [TopicNode],
    /// Every sink.
    pub sinks: &'static [Sink],
}

/// Clickpulse's operators: click-data → enrich → enriched-click-data → detect (→
/// special-offers) and aggregate → the dashboard; special-offers → web → popups, and → webhooks
/// → the shop's endpoints. The sources
/// in front of them are plug-ins, each declaring its own stage ([`Topology::with_sources`]).
pub const OPERATORS: &[Stage] = &[
    Stage {
        name: "enrich",
        kind: StageKind::Operator,
        description: "Adds product and visitor data to every click",
        inputs: &[Topic::ClickData],
        outputs: &[Topic::EnrichedClickData],
        sinks: &[],
        dead_letters: true,
        instances: Instances::Group,
    },
    Stage {
        name: "detect",
        kind: StageKind::Operator,
        description: "Runs the behaviour patterns' state machines",
        inputs: &[Topic::EnrichedClickData],
        outputs: &[Topic::SpecialOffers],
        sinks: &[],
        dead_letters: true,
        instances: Instances::Group,
    },
    Stage {
        name: "aggregate",
        kind: StageKind::Operator,
        description: "Event-time windows behind the dashboard",
        inputs: &[Topic::EnrichedClickData, Topic::SpecialOffers],
        outputs: &[Topic::Alerts],
        sinks: &["dashboard"],
        dead_letters: true,
        instances: Instances::SingleActive,
    },
    Stage {
        name: "web",
        kind: StageKind::Operator,
        description: "Delivers offers to browsers over Server-Sent Events",
        inputs: &[Topic::SpecialOffers],
        outputs: &[],
        sinks: &["popups"],
        dead_letters: true,
        instances: Instances::Replicated,
    },
    Stage {
        name: "webhooks",
        kind: StageKind::Operator,
        description: "Sends offers and alerts, signed, to the shop's own systems, retrying until delivered",
        inputs: &[Topic::SpecialOffers, Topic::Alerts],
        outputs: &[],
        sinks: &["shop-systems"],
        dead_letters: true,
        instances: Instances::SingleActive,
    },
];

/// Every topic of the pipeline.
pub const TOPICS: &[TopicNode] = &[
    TopicNode {
        name: Topic::ClickData,
        dead: false,
        side: false,
    },
    TopicNode {
        name: Topic::EnrichedClickData,
        dead: false,
        side: false,
    },
    TopicNode {
        name: Topic::SpecialOffers,
        dead: false,
        side: false,
    },
    TopicNode {
        name: Topic::DeadLetters,
        dead: true,
        side: false,
    },
    TopicNode {
        name: Topic::Alerts,
        dead: false,
        side: true,
    },
];

/// Where the pipeline's results leave it.
pub const SINKS: &[Sink] = &[
    Sink {
        name: "dashboard",
        label: "Dashboard",
        href: "/",
        link_text: "Open dashboard",
    },
    Sink {
        name: "popups",
        label: "Browser popups",
        href: "/shop",
        link_text: "Open the shop",
    },
    Sink {
        name: "shop-systems",
        label: "The shop's systems",
        href: "/api/webhooks",
        link_text: "Deliveries",
    },
];

impl Topology {
    /// The pipeline with these source stages in front of its [`OPERATORS`].
    pub fn with_sources(sources: impl IntoIterator<Item = Stage>) -> Self {
        Topology {
            stages: sources
                .into_iter()
                .chain(OPERATORS.iter().copied())
                .collect(),
            topics: TOPICS,
            sinks: SINKS,
        }
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Every stage's name, in data-flow order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name).collect()
    }

    /// Every topic with its partition count: `partitions` each, the dead-letter topic one (its
    /// records are few and read in order).
    pub fn partitions(&self, partitions: u32) -> Vec<(&'static str, u32)> {
        self.topics
            .iter()
            .map(|t| (t.name.name(), if t.dead { 1 } else { partitions }))
            .collect()
    }

    /// The operator stages that read `topic`, in data-flow order.
    pub fn consumers_of(&self, topic: Topic) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|s| s.inputs.contains(&topic))
            .map(|s| s.name)
            .collect()
    }

    /// The operator stages (those that consume topics), in data-flow order.
    pub fn operators(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|s| s.kind == StageKind::Operator)
            .map(|s| s.name)
            .collect()
    }

    /// The topics some stage reads, in data-flow order, each with its consumers.
    pub fn consumed_topics(&self) -> Vec<(Topic, Vec<&'static str>)> {
        self.topics
            .iter()
            .map(|t| (t.name, self.consumers_of(t.name)))
            .filter(|(_, consumers)| !consumers.is_empty())
            .collect()
    }

    /// What is wrong with the declaration: a stage reading or writing an undeclared topic or
    /// sink, a name used twice, a topic nobody writes. Empty when it is sound.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let topic = |name: &Topic| self.topics.iter().any(|t| t.name == *name);
        for (i, s) in self.stages.iter().enumerate() {
            if self.stages[..i].iter().any(|o| o.name == s.name) {
                problems.push(format!("stage {:?} is declared twice", s.name));
            }
            for t in s.inputs.iter().chain(s.outputs) {
                if !topic(t) {
                    problems.push(format!(
                        "stage {:?} names undeclared topic {:?}",
                        s.name,
                        t.name()
                    ));
                }
            }
            for k in s.sinks {
                if !self.sinks.iter().any(|sink| sink.name == *k) {
                    problems.push(format!("stage {:?} names undeclared sink {k:?}", s.name));
                }
            }
            if (s.kind == StageKind::Source) != s.inputs.is_empty() {
                problems.push(format!(
                    "stage {:?}: a source reads no topic and an operator reads at least one",
                    s.name
                ));
            }
        }
        for k in self.sinks {
            if self.stages.iter().any(|s| s.name == k.name) {
                problems.push(format!("sink {:?} has the name of a stage", k.name));
            }
        }
        for t in self.topics.iter().filter(|t| !t.dead) {
            if !self.stages.iter().any(|s| s.outputs.contains(&t.name)) {
                problems.push(format!("topic {:?} has no writer", t.name.name()));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source as the plug-ins declare theirs.
    const LOG: Stage = Stage {
        name: "log",
        kind: StageKind::Source,
        description: "",
        inputs: &[],
        outputs: &[Topic::ClickData],
        sinks: &[],
        dead_letters: false,
        instances: Instances::SingleActive,
    };

    #[test]
    fn the_operators_behind_a_source_are_sound() {
        let pipeline = Topology::with_sources([LOG]);
        assert_eq!(pipeline.problems(), Vec::<String>::new());
        assert_eq!(
            pipeline.stage_names(),
            ["log", "enrich", "detect", "aggregate", "web", "webhooks"]
        );
        assert_eq!(
            pipeline.consumed_topics(),
            vec![
                (Topic::ClickData, vec!["enrich"]),
                (Topic::EnrichedClickData, vec!["detect", "aggregate"]),
                (Topic::SpecialOffers, vec!["aggregate", "web", "webhooks"]),
                (Topic::Alerts, vec!["webhooks"]),
            ]
        );
        assert_eq!(
            pipeline.operators(),
            ["enrich", "detect", "aggregate", "web", "webhooks"]
        );
        assert_eq!(
            Topology::with_sources([]).problems(),
            ["topic \"click-data\" has no writer"]
        );
    }

    #[test]
    fn problems_are_found() {
        let broken = Topology {
            stages: vec![
                Stage {
                    name: "a",
                    kind: StageKind::Operator,
                    description: "",
                    inputs: &[Topic::ClickData],
                    outputs: &[],
                    sinks: &["void"],
                    dead_letters: false,
                    instances: Instances::Group,
                },
                Stage {
                    name: "a",
                    kind: StageKind::Source,
                    description: "",
                    inputs: &[],
                    outputs: &[],
                    sinks: &[],
                    dead_letters: false,
                    instances: Instances::Group,
                },
            ],
            topics: &[TopicNode {
                name: Topic::SpecialOffers,
                dead: false,
                side: false,
            }],
            sinks: &[Sink {
                name: "a",
                label: "",
                href: "",
                link_text: "",
            }],
        };
        assert_eq!(
            broken.problems(),
            [
                "stage \"a\" names undeclared topic \"click-data\"",
                "stage \"a\" names undeclared sink \"void\"",
                "stage \"a\" is declared twice",
                "sink \"a\" has the name of a stage",
                "topic \"special-offers\" has no writer",
            ]
        );
    }
}
