//! The layout engine (LAYOUTS.md §2–3): inputs in join order + the layout config → where each
//! input is drawn. Geometry is a pure function of (template, canvas, count); the only state is
//! the slot list, which decides who keeps which tile when inputs come and go.

use std::fmt;

/// `even(v) = 2·floor(v/2)`.
pub fn even(v: f64) -> u32 {
    let v = v.max(0.0).floor() as u32;
    v & !1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    NineGrid,
    Float,
    ScreenShareLeft,
    ScreenShareRight,
    Custom,
}

impl Template {
    pub fn parse(s: &str) -> Option<Template> {
        Some(match s {
            "nine_grid" | "nine_grids_view" => Template::NineGrid,
            "float" => Template::Float,
            "screen_share_left" => Template::ScreenShareLeft,
            "screen_share_right" => Template::ScreenShareRight,
            "custom" => Template::Custom,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Template::NineGrid => "nine_grid",
            Template::Float => "float",
            Template::ScreenShareLeft => "screen_share_left",
            Template::ScreenShareRight => "screen_share_right",
            Template::Custom => "custom",
        }
    }

    /// The most tiles the template draws.
    pub fn max_tiles(self) -> usize {
        match self {
            Template::ScreenShareLeft | Template::ScreenShareRight => 24,
            _ => 25,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillMode {
    /// Scale to cover, centre-crop.
    Fill,
    /// Scale to fit, centre, pad with the background.
    Fit,
}

impl FillMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FillMode::Fill => "fill",
            FillMode::Fit => "fit",
        }
    }
}

/// An RGB colour (`#rrggbb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub fn parse(s: &str) -> Option<Rgb> {
        let hex = s.strip_prefix('#')?;
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u32::from_str_radix(hex, 16).ok()?;
        Some(Rgb((v >> 16) as u8, (v >> 8) as u8, v as u8))
    }
}

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// Which user's which stream: the key of an input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputKey {
    pub user: String,
    /// "main" or "aux".
    pub stream: String,
}

impl InputKey {
    pub fn new(user: &str, stream: &str) -> InputKey {
        InputKey { user: user.to_owned(), stream: stream.to_owned() }
    }
}

impl fmt::Display for InputKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.stream)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub z_order: u32,
    pub fill_mode: FillMode,
    /// The padding/empty colour of this tile; `None` = the layout's background colour.
    pub background: Option<Rgb>,
}

impl Tile {
    fn new(x: u32, y: u32, width: u32, height: u32, z_order: u32, fill_mode: FillMode) -> Tile {
        Tile { x, y, width, height, z_order, fill_mode, background: None }
    }
}

/// A `custom` region (LAYOUTS.md §3.4); coordinates already even.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub tile: Tile,
    /// `None` is a free slot.
    pub input: Option<InputKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutConfig {
    pub template: Template,
    pub max_tiles: usize,
    /// `main`: the float's big picture, the screen-share main picture.
    pub main: Option<InputKey>,
    pub regions: Vec<Region>,
}

/// One tile to draw: what goes in it (`None` shows the background) and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub input: Option<InputKey>,
    pub tile: Tile,
}

/// The slot list S (LAYOUTS.md §2): inputs keep their slot while present; a leaver's slot goes
/// to the earliest-joined waiting input, or is removed (later entries shift left).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotList {
    slots: Vec<InputKey>,
}

impl SlotList {
    pub fn slots(&self) -> &[InputKey] {
        &self.slots
    }

    /// Brings S up to date with the present candidates (in join order).
    pub fn sync(&mut self, candidates: &[InputKey], capacity: usize) {
        let mut waiting: Vec<&InputKey> = candidates.iter().filter(|c| !self.slots.contains(c)).collect();
        let mut next = Vec::with_capacity(self.slots.len());
        for s in self.slots.drain(..) {
            if candidates.contains(&s) {
                next.push(s);
            } else if !waiting.is_empty() {
                next.push(waiting.remove(0).clone());
            }
        }
        // Capacity may have shrunk (a PATCH): the latest entries wait again.
        next.truncate(capacity);
        for c in waiting {
            if next.len() >= capacity {
                break;
            }
            if !next.contains(c) {
                next.push(c.clone());
            }
        }
        self.slots = next;
    }
}

/// The layout's state across recomputations: the slot list.
#[derive(Debug, Clone, Default)]
pub struct LayoutState {
    slots: SlotList,
}

impl LayoutState {
    /// Where every input goes, for the present `inputs` in join order. `has_aux(user)` tells
    /// whether a user publishes an aux stream (the screen-share main falls back to `main`).
    pub fn compute(&mut self, config: &LayoutConfig, width: u32, height: u32, inputs: &[InputKey]) -> Vec<Placement> {
        let max = config.max_tiles.clamp(1, config.template.max_tiles());
        match config.template {
            Template::NineGrid => {
                self.slots.sync(inputs, max);
                let rects = nine_grid(width, height, self.slots.slots().len());
                self.slots.slots().iter().zip(rects).map(|(k, tile)| Placement { input: Some(k.clone()), tile }).collect()
            }
            Template::Float => {
                let big = match &config.main {
                    Some(main) => inputs.contains(main).then(|| main.clone()),
                    None => inputs.first().cloned(),
                };
                let others: Vec<InputKey> = inputs.iter().filter(|k| Some(*k) != big.as_ref() && Some(*k) != config.main.as_ref()).cloned().collect();
                self.slots.sync(&others, max.saturating_sub(1));
                let n = 1 + self.slots.slots().len();
                let mut out = vec![Placement { input: big, tile: Tile::new(0, 0, width, height, 0, FillMode::Fill) }];
                out.extend(self.slots.slots().iter().zip(float_smalls(width, height, n)).map(|(k, tile)| Placement { input: Some(k.clone()), tile }));
                out
            }
            Template::ScreenShareLeft | Template::ScreenShareRight => {
                let right = config.template == Template::ScreenShareRight;
                // The main picture: main.user's main.stream (default aux), falling back to its
                // main stream when it publishes no aux.
                let main = config.main.as_ref().and_then(|m| {
                    if inputs.contains(m) {
                        Some(m.clone())
                    } else if m.stream == "aux" {
                        let fallback = InputKey::new(&m.user, "main");
                        inputs.contains(&fallback).then_some(fallback)
                    } else {
                        None
                    }
                });
                let others: Vec<InputKey> = inputs.iter().filter(|k| Some(*k) != main.as_ref()).cloned().collect();
                self.slots.sync(&others, max.saturating_sub(1));
                let n = 1 + self.slots.slots().len();
                let (main_tile, smalls) = screen_share(width, height, n, right);
                let mut out = vec![Placement { input: main, tile: main_tile }];
                out.extend(self.slots.slots().iter().zip(smalls).map(|(k, tile)| Placement { input: Some(k.clone()), tile }));
                out
            }
            Template::Custom => {
                let bound: Vec<&InputKey> = config.regions.iter().filter_map(|r| r.input.as_ref()).collect();
                let free: Vec<InputKey> = inputs.iter().filter(|k| !bound.contains(k)).cloned().collect();
                let free_regions = config.regions.iter().filter(|r| r.input.is_none()).count();
                self.slots.sync(&free, free_regions);
                let mut fill = self.slots.slots().iter();
                config
                    .regions
                    .iter()
                    .map(|r| match &r.input {
                        Some(k) => Placement { input: inputs.contains(k).then(|| k.clone()), tile: r.tile },
                        None => Placement { input: fill.next().cloned(), tile: r.tile },
                    })
                    .collect()
            }
        }
    }
}

/// Grid edges: `X_k = even(floor(k·W/cols))` for k < cols, `X_cols = W`.
fn edges(size: u32, parts: u32) -> Vec<u32> {
    let mut e: Vec<u32> = (0..parts).map(|k| even((k as u64 * size as u64 / parts as u64) as f64)).collect();
    e.push(size);
    e
}

/// `nine_grid` (LAYOUTS.md §3.1): n tiles, row-major, an incomplete last row left-aligned.
pub fn nine_grid(width: u32, height: u32, n: usize) -> Vec<Tile> {
    let (cols, rows) = match n {
        0 => return Vec::new(),
        1 => (1, 1),
        2 => (2, 1),
        3..=4 => (2, 2),
        5..=9 => (3, 3),
        10..=16 => (4, 4),
        _ => (5, 5),
    };
    let (xs, ys) = (edges(width, cols), edges(height, rows));
    (0..n.min(25))
        .map(|i| {
            let (col, row) = (i % cols as usize, i / cols as usize);
            Tile::new(xs[col], ys[row], xs[col + 1] - xs[col], ys[row + 1] - ys[row], 0, FillMode::Fill)
        })
        .collect()
}

/// The smalls of `float` (LAYOUTS.md §3.2) for N = 1 + smalls.
pub fn float_smalls(width: u32, height: u32, n: usize) -> Vec<Tile> {
    let (per_row, s, g, m) = if n <= 17 { (4usize, 0.235, 0.012, 0.012) } else { (5, 0.188, 0.01, 0.01) };
    let (w, h) = (width as f64, height as f64);
    (0..n.saturating_sub(1))
        .map(|k| {
            let (c, r) = ((k % per_row) as f64, (k / per_row) as f64);
            let x = even(m * w + c * (s * w + g * w));
            let y = even(h - m * h - s * h - r * (s * h + g * h));
            Tile::new(x, y, even(s * w), even(s * h), 1, FillMode::Fill)
        })
        .collect()
}

/// `screen_share_left/right` (LAYOUTS.md §3.3) for N = 1 + smalls: the main tile and the smalls.
pub fn screen_share(width: u32, height: u32, n: usize, right: bool) -> (Tile, Vec<Tile>) {
    let (w, h) = (width as f64, height as f64);
    let (sw, sh, cols, per_col) = match n {
        0..=5 => (even(w / 5.0), even(h / 4.0), 1, 4),
        6..=7 => (even(w / 7.0), even(h / 6.0), 1, 6),
        8..=9 => (even(w / 9.0), even(h / 8.0), 1, 8),
        _ => (even(w / 10.0), even(h / 8.0), 2, 8),
    };
    let main_w = width - cols * sw;
    let main_h = if n >= 18 { height - sh } else { height };
    let main = Tile::new(0, 0, main_w, main_h, 0, FillMode::Fit);
    let smalls = (0..n.saturating_sub(1)).map(|k| {
        if k < (cols * per_col) as usize {
            let (c, r) = (k as u32 / per_col, k as u32 % per_col);
            Tile::new(main_w + c * sw, r * sh, sw, sh, 0, FillMode::Fill)
        } else {
            let j = k as u32 - cols * per_col;
            Tile::new(j * sw, height - sh, sw, sh, 0, FillMode::Fill)
        }
    });
    let mirror = |t: Tile| if right { Tile { x: width - t.x - t.width, ..t } } else { t };
    (mirror(main), smalls.map(mirror).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rects(tiles: &[Tile]) -> Vec<(u32, u32, u32, u32)> {
        tiles.iter().map(|t| (t.x, t.y, t.width, t.height)).collect()
    }

    fn keys(n: usize) -> Vec<InputKey> {
        (0..n).map(|i| InputKey::new(&format!("u{i:02}"), "main")).collect()
    }

    #[test]
    fn nine_grid_matches_the_spec_examples() {
        assert_eq!(rects(&nine_grid(1280, 720, 2)), vec![(0, 0, 640, 720), (640, 0, 640, 720)]);
        assert_eq!(rects(&nine_grid(1280, 720, 5)), vec![(0, 0, 426, 240), (426, 0, 426, 240), (852, 0, 428, 240), (0, 240, 426, 240), (426, 240, 426, 240)]);
        assert_eq!(rects(&nine_grid(1280, 720, 1)), vec![(0, 0, 1280, 720)]);
    }

    #[test]
    fn float_matches_the_spec_example() {
        let smalls = float_smalls(1280, 720, 5);
        assert_eq!(smalls.iter().map(|t| (t.x, t.y)).collect::<Vec<_>>(), vec![(14, 542), (330, 542), (646, 542), (962, 542)]);
        assert!(smalls.iter().all(|t| (t.width, t.height, t.z_order) == (300, 168, 1)));
    }

    #[test]
    fn screen_share_matches_the_spec_examples() {
        let (main, smalls) = screen_share(1280, 720, 5, false);
        assert_eq!(((main.width, main.height), (smalls[0].width, smalls[0].height)), ((1024, 720), (256, 180)));
        let (main, smalls) = screen_share(1280, 720, 9, false);
        assert_eq!(((main.width, main.height), (smalls[0].width, smalls[0].height)), ((1138, 720), (142, 90)));
        let (main, smalls) = screen_share(1280, 720, 24, false);
        assert_eq!(((main.width, main.height), (smalls[0].width, smalls[0].height)), ((1024, 630), (128, 90)));
        assert_eq!(main.fill_mode, FillMode::Fit);
        // Two columns of 8, then the bottom row.
        assert_eq!((smalls[8].x, smalls[8].y), (1024 + 128, 0));
        assert_eq!((smalls[16].x, smalls[16].y), (0, 630));
        let (rmain, rsmalls) = screen_share(1280, 720, 5, true);
        assert_eq!((rmain.x, rsmalls[0].x), (256, 0), "the right variant mirrors every rectangle");
    }

    /// Every template × every count: inside the canvas, even, and the grid tiles the canvas.
    #[test]
    fn every_template_and_count_is_inside_the_canvas_and_even() {
        for (w, h) in [(1280u32, 720u32), (1920, 1080), (640, 360), (1080, 1920)] {
            for n in 1..=25usize {
                let grid = nine_grid(w, h, n);
                assert_eq!(grid.len(), n);
                let area: u64 = grid.iter().map(|t| t.width as u64 * t.height as u64).sum();
                let cells = match n {
                    1 => 1,
                    2 => 2,
                    3..=4 => 4,
                    5..=9 => 9,
                    10..=16 => 16,
                    _ => 25,
                };
                if n == cells {
                    assert_eq!(area, w as u64 * h as u64, "a full grid covers the canvas ({w}x{h}, n={n})");
                }
                let mut all = grid.clone();
                all.extend(float_smalls(w, h, n));
                if n <= 24 {
                    let (m, s) = screen_share(w, h, n, n % 2 == 0);
                    assert_eq!(s.len(), n - 1);
                    all.push(m);
                    all.extend(s);
                }
                for t in all {
                    assert!(t.x % 2 == 0 && t.y % 2 == 0, "{w}x{h} n={n}: {t:?}");
                    assert!(t.x + t.width <= w && t.y + t.height <= h, "{w}x{h} n={n}: {t:?}");
                    assert!(t.width >= 2 && t.height >= 2, "{t:?}");
                }
            }
        }
    }

    #[test]
    fn a_leavers_slot_goes_to_the_earliest_waiting_input_or_shifts() {
        let config = LayoutConfig { template: Template::NineGrid, max_tiles: 3, main: None, regions: Vec::new() };
        let mut s = LayoutState::default();
        let all = keys(5);
        let p = s.compute(&config, 1280, 720, &all);
        assert_eq!(p.iter().map(|p| p.input.clone().unwrap().user).collect::<Vec<_>>(), vec!["u00", "u01", "u02"]);
        // u01 leaves: u03 (earliest waiting) takes its slot.
        let present: Vec<InputKey> = all.iter().filter(|k| k.user != "u01").cloned().collect();
        let p = s.compute(&config, 1280, 720, &present);
        assert_eq!(p.iter().map(|p| p.input.clone().unwrap().user).collect::<Vec<_>>(), vec!["u00", "u03", "u02"]);
        // u00 leaves with nobody... u04 still waits: it takes slot 0.
        let present: Vec<InputKey> = present.into_iter().filter(|k| k.user != "u00").collect();
        let p = s.compute(&config, 1280, 720, &present);
        assert_eq!(p.iter().map(|p| p.input.clone().unwrap().user).collect::<Vec<_>>(), vec!["u04", "u03", "u02"]);
        // u03 leaves and nobody waits: its slot is removed, later entries shift left.
        let present: Vec<InputKey> = present.into_iter().filter(|k| k.user != "u03").collect();
        let p = s.compute(&config, 1280, 720, &present);
        assert_eq!(p.iter().map(|p| p.input.clone().unwrap().user).collect::<Vec<_>>(), vec!["u04", "u02"]);
        assert_eq!(rects(&p.iter().map(|p| p.tile).collect::<Vec<_>>()), rects(&nine_grid(1280, 720, 2)));
    }

    #[test]
    fn float_big_picture_is_main_or_the_earliest_and_the_next_moves_up() {
        let config = LayoutConfig { template: Template::Float, max_tiles: 25, main: None, regions: Vec::new() };
        let mut s = LayoutState::default();
        let all = keys(3);
        let p = s.compute(&config, 1280, 720, &all);
        assert_eq!(p[0].input.as_ref().unwrap().user, "u00");
        assert_eq!(p.len(), 3);
        let p = s.compute(&config, 1280, 720, &all[1..]);
        assert_eq!(p[0].input.as_ref().unwrap().user, "u01", "the next earliest moves up");
        assert_eq!(p.len(), 2);
        let with_main = LayoutConfig { main: Some(InputKey::new("u02", "main")), ..config.clone() };
        let p = LayoutState::default().compute(&with_main, 1280, 720, &all);
        assert_eq!(p[0].input.as_ref().unwrap().user, "u02");
        let absent = LayoutConfig { main: Some(InputKey::new("zz", "main")), ..config };
        let p = LayoutState::default().compute(&absent, 1280, 720, &all);
        assert_eq!(p[0].input, None, "a set but absent main leaves the background");
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn screen_share_main_falls_back_to_the_users_main_stream() {
        let config = LayoutConfig { template: Template::ScreenShareLeft, max_tiles: 24, main: Some(InputKey::new("t", "aux")), regions: Vec::new() };
        let inputs = vec![InputKey::new("a", "main"), InputKey::new("t", "main"), InputKey::new("t", "aux")];
        let p = LayoutState::default().compute(&config, 1280, 720, &inputs);
        assert_eq!(p[0].input, Some(InputKey::new("t", "aux")));
        assert_eq!(p[1..].iter().map(|p| p.input.clone().unwrap()).collect::<Vec<_>>(), vec![InputKey::new("a", "main"), InputKey::new("t", "main")]);
        let p = LayoutState::default().compute(&config, 1280, 720, &inputs[..2]);
        assert_eq!(p[0].input, Some(InputKey::new("t", "main")), "no aux: the main stream");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn custom_regions_bind_users_and_fill_free_slots_in_join_order() {
        let region = |x, user: Option<&str>| Region { tile: Tile::new(x, 0, 100, 100, 0, FillMode::Fit), input: user.map(|u| InputKey::new(u, "main")) };
        let config = LayoutConfig { template: Template::Custom, max_tiles: 25, main: None, regions: vec![region(0, None), region(100, Some("jerry")), region(200, None)] };
        let inputs = vec![InputKey::new("a", "main"), InputKey::new("jerry", "main"), InputKey::new("b", "main"), InputKey::new("c", "main")];
        let p = LayoutState::default().compute(&config, 1280, 720, &inputs);
        assert_eq!(p.iter().map(|p| p.input.as_ref().map(|k| k.user.as_str())).collect::<Vec<_>>(), vec![Some("a"), Some("jerry"), Some("b")]);
        let p = LayoutState::default().compute(&config, 1280, 720, &inputs[2..]);
        assert_eq!(p.iter().map(|p| p.input.as_ref().map(|k| k.user.as_str())).collect::<Vec<_>>(), vec![Some("b"), None, Some("c")], "an absent bound user shows the background");
    }

    /// Every template × every count at 1280x720, against `layouts.golden` (reviewed by hand
    /// against LAYOUTS.md §3; regenerate with `UPDATE_GOLDEN=1 cargo test -p tessera-engine`).
    #[test]
    fn golden_geometry_for_every_template_and_count() {
        let (w, h) = (1280, 720);
        let mut text = String::new();
        let line = |t: &Tile| format!("({},{},{},{} z{} {})", t.x, t.y, t.width, t.height, t.z_order, t.fill_mode.as_str());
        for template in [Template::NineGrid, Template::Float, Template::ScreenShareLeft, Template::ScreenShareRight] {
            for n in 1..=template.max_tiles() {
                let config = LayoutConfig { template, max_tiles: template.max_tiles(), main: Some(InputKey::new("u00", "main")), regions: Vec::new() };
                let placements = LayoutState::default().compute(&config, w, h, &keys(n));
                let tiles: Vec<String> = placements.iter().map(|p| format!("{}={}", p.input.as_ref().map(|k| k.user.as_str()).unwrap_or("-"), line(&p.tile))).collect();
                text.push_str(&format!("{} n={n}: {}\n", template.as_str(), tiles.join(" ")));
            }
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mcu/layouts.golden");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let golden = std::fs::read_to_string(&path).expect("layouts.golden");
        for (i, (got, want)) in text.lines().zip(golden.lines()).enumerate() {
            assert_eq!(got, want, "line {}", i + 1);
        }
        assert_eq!(text.lines().count(), golden.lines().count());
    }

    #[test]
    fn colours_and_templates_parse() {
        assert_eq!(Rgb::parse("#ff8000"), Some(Rgb(255, 128, 0)));
        assert_eq!(Rgb::parse("ff8000"), None);
        assert_eq!(Rgb::parse("#ff80zz"), None);
        assert_eq!(Rgb(1, 2, 3).to_string(), "#010203");
        assert_eq!(Template::parse("nine_grids_view"), Some(Template::NineGrid));
        assert_eq!(Template::parse("grid"), None);
    }
}
