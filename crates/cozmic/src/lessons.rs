//! The lesson catalogue (static: lessons are content, not data).

/// A lesson.
#[derive(Clone, Copy, Debug)]
pub struct Lesson {
    /// URL id.
    pub id: &'static str,
    /// Title.
    pub title: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Paragraphs.
    pub body: &'static [&'static str],
}

/// Every lesson, in order.
pub const LESSONS: &[Lesson] = &[
    Lesson {
        id: "light-years",
        title: "How far is a light-year?",
        summary: "Distance measured in time, and why astronomers like it.",
        body: &[
            "Light travels about 300,000 kilometres every second. In a year that adds up to roughly 9.46 trillion kilometres: one light-year.",
            "When you look at a star 100 light-years away, you see light that left it a century ago. Looking far is looking back in time.",
        ],
    },
    Lesson {
        id: "phases-of-the-moon",
        title: "Why the Moon has phases",
        summary: "Half of the Moon is always lit; we just see different amounts of it.",
        body: &[
            "The Sun always lights half of the Moon. As the Moon orbits Earth over about 29.5 days, we see more or less of that lit half.",
            "New moon: the lit side faces away from us. Full moon: it faces us. Everything between is a crescent or a gibbous moon.",
        ],
    },
    Lesson {
        id: "seasons",
        title: "What causes the seasons",
        summary: "It is the tilt, not the distance.",
        body: &[
            "Earth's axis is tilted about 23.4 degrees. For half the year one hemisphere leans toward the Sun and gets more direct sunlight and longer days.",
            "Earth is actually closest to the Sun in early January, in the middle of the northern winter.",
        ],
    },
    Lesson {
        id: "black-holes",
        title: "Black holes in five minutes",
        summary: "Where gravity wins, and what the event horizon is.",
        body: &[
            "A black hole is a region where so much mass is packed so tightly that nothing, not even light, can climb out past a boundary called the event horizon.",
            "From far away a black hole pulls like any other mass of the same size: if the Sun became one, Earth would keep its orbit.",
        ],
    },
    Lesson {
        id: "exoplanets",
        title: "Finding planets around other stars",
        summary: "Wobbles and tiny eclipses.",
        body: &[
            "Most exoplanets are found by the transit method: a planet passing in front of its star dims it by a tiny, regular amount.",
            "Others are found by the wobble they give their star, seen as a shift in the colour of its light.",
        ],
    },
    Lesson {
        id: "rockets",
        title: "How rockets fly in space",
        summary: "Newton's third law, no air needed.",
        body: &[
            "A rocket throws mass (hot gas) backwards very fast; the gas pushes the rocket forwards. There is nothing to push against, and nothing needed.",
            "To orbit, a rocket must mostly go sideways: about 7.8 kilometres per second for a low Earth orbit.",
        ],
    },
];

/// The lesson with this id.
pub fn find(id: &str) -> Option<&'static Lesson> {
    LESSONS.iter().find(|l| l.id == id)
}
