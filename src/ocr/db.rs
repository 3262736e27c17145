//! DB post-processing (Liao et al., "Real-time Scene Text Detection with Differentiable
//! Binarization", AAAI 2020) as PaddleOCR's `DBPostProcess` does it: threshold the probability
//! map, optionally dilate by a 2×2 square, trace every border of the binary map (outer borders and
//! holes, OpenCV's `RETR_LIST`), fit each border's minimum-area rectangle, drop rectangles whose
//! short side is under `min_size` or whose mean probability (inside the rectangle) is under
//! `box_thresh`, grow the rest by the DB "unclip" offset `area × unclip_ratio / perimeter`, drop
//! those whose grown short side is under `min_size + 2`, and map the corners back to the image.
//!
//! PaddleOCR grows the rectangle with pyclipper's round-joined polygon offset and takes the
//! minimum-area rectangle of the result; for a rectangle that is exactly the rectangle with
//! each side moved out by the offset (the round corners lie inside it), which is what
//! [`unclip`] computes, without pyclipper's integer rounding.

use image::{GrayImage, Luma};
use imageproc::point::Point;

/// Post-processing parameters (PaddleOCR's defaults for its detectors).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbParams {
    /// Probability above which a pixel is text (`det_db_thresh`, 0.3).
    pub thresh: f32,
    /// Mean probability a box needs to be kept (`det_db_box_thresh`, 0.6).
    pub box_thresh: f32,
    /// Offset ratio of the unclip (`det_db_unclip_ratio`, 1.5).
    pub unclip_ratio: f32,
    /// Dilate the binary map by a 2×2 square first (`use_dilation`, false).
    pub use_dilation: bool,
    /// At most this many borders are considered (`max_candidates`, 1000).
    pub max_candidates: usize,
    /// Boxes with a shorter side (in map pixels) are dropped (`min_size`, 3).
    pub min_size: f32,
}

impl Default for DbParams {
    fn default() -> Self {
        DbParams {
            thresh: 0.3,
            box_thresh: 0.6,
            unclip_ratio: 1.5,
            use_dilation: false,
            max_candidates: 1000,
            min_size: 3.0,
        }
    }
}

/// A detected text box: four corners (top-left, top-right, bottom-right, bottom-left, as
/// PaddleOCR orders them) in image pixels, and its mean text probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TextBox {
    /// Corners `[x, y]`.
    pub points: [[f32; 2]; 4],
    /// Mean probability inside the box before unclipping.
    pub score: f32,
}

/// A probability map: `width × height` values in row-major order.
#[derive(Debug, Clone)]
pub struct ProbMap {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Values in `[0, 1]`.
    pub values: Vec<f32>,
}

impl ProbMap {
    fn at(&self, x: u32, y: u32) -> f32 {
        self.values[(y * self.width + x) as usize]
    }
}

/// A rotated rectangle: centre, side lengths along `u = (cos, sin)` and its normal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotatedRect {
    /// Centre.
    pub center: [f64; 2],
    /// Side along `u`.
    pub width: f64,
    /// Side along the normal of `u`.
    pub height: f64,
    /// Direction of the first side.
    pub u: [f64; 2],
}

impl RotatedRect {
    /// The corners, ordered as PaddleOCR's `get_mini_boxes` orders them.
    pub fn corners(&self) -> [[f64; 2]; 4] {
        let [cx, cy] = self.center;
        let (hw, hh) = (self.width / 2.0, self.height / 2.0);
        let (u, v) = (self.u, [-self.u[1], self.u[0]]);
        let mut p: Vec<[f64; 2]> = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
            .iter()
            .map(|&(a, b)| {
                [
                    cx + a * hw * u[0] + b * hh * v[0],
                    cy + a * hw * u[1] + b * hh * v[1],
                ]
            })
            .collect();
        p.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let (i1, i4) = if p[1][1] > p[0][1] { (0, 1) } else { (1, 0) };
        let (i2, i3) = if p[3][1] > p[2][1] { (2, 3) } else { (3, 2) };
        [p[i1], p[i2], p[i3], p[i4]]
    }

    /// The shorter side.
    pub fn short_side(&self) -> f64 {
        self.width.min(self.height)
    }
}

/// The minimum-area rectangle around points (rotating calipers over the convex hull).
pub fn min_area_rect(points: &[Point<i32>]) -> RotatedRect {
    let hull = imageproc::geometry::convex_hull(points.to_vec());
    let pts: Vec<[f64; 2]> = hull.iter().map(|p| [p.x as f64, p.y as f64]).collect();
    let mut best: Option<(f64, RotatedRect)> = None;
    let n = pts.len();
    let mut consider = |u: [f64; 2]| {
        let v = [-u[1], u[0]];
        let (mut a0, mut a1, mut b0, mut b1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in &pts {
            let a = p[0] * u[0] + p[1] * u[1];
            let b = p[0] * v[0] + p[1] * v[1];
            a0 = a0.min(a);
            a1 = a1.max(a);
            b0 = b0.min(b);
            b1 = b1.max(b);
        }
        let (ca, cb) = ((a0 + a1) / 2.0, (b0 + b1) / 2.0);
        let rect = RotatedRect {
            center: [ca * u[0] + cb * v[0], ca * u[1] + cb * v[1]],
            width: a1 - a0,
            height: b1 - b0,
            u,
        };
        let area = rect.width * rect.height;
        if best.as_ref().map(|(b, _)| area < *b - 1e-9).unwrap_or(true) {
            best = Some((area, rect));
        }
    };
    consider([1.0, 0.0]);
    for i in 0..n {
        let (p, q) = (pts[i], pts[(i + 1) % n]);
        let (dx, dy) = (q[0] - p[0], q[1] - p[1]);
        let len = (dx * dx + dy * dy).sqrt();
        if len > 0.0 {
            consider([dx / len, dy / len]);
        }
    }
    best.expect("at least the axis-aligned rectangle").1
}

/// The rectangle grown by DB's unclip offset `area × ratio / perimeter` on every side.
pub fn unclip(rect: &RotatedRect, ratio: f64) -> RotatedRect {
    let area = rect.width * rect.height;
    let perimeter = 2.0 * (rect.width + rect.height);
    let d = if perimeter > 0.0 {
        area * ratio / perimeter
    } else {
        0.0
    };
    RotatedRect {
        width: rect.width + 2.0 * d,
        height: rect.height + 2.0 * d,
        ..*rect
    }
}

/// Whether the point lies inside (or on) a convex quadrilateral.
fn inside(quad: &[[f64; 2]; 4], x: f64, y: f64) -> bool {
    let mut sign = 0.0;
    for i in 0..4 {
        let (p, q) = (quad[i], quad[(i + 1) % 4]);
        let c = (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0]);
        if c.abs() < 1e-9 {
            continue;
        }
        if sign == 0.0 {
            sign = c.signum();
        } else if c.signum() != sign {
            return false;
        }
    }
    true
}

/// The mean probability over the pixels inside a quadrilateral (PaddleOCR's `box_score_fast`:
/// its bounding box clipped to the map, pixels of the filled polygon).
pub fn box_score(map: &ProbMap, quad: &[[f64; 2]; 4]) -> f32 {
    let clip = |v: f64, hi: u32| v.clamp(0.0, hi as f64 - 1.0) as u32;
    let xmin = clip(
        quad.iter().map(|p| p[0]).fold(f64::MAX, f64::min).floor(),
        map.width,
    );
    let xmax = clip(
        quad.iter().map(|p| p[0]).fold(f64::MIN, f64::max).ceil(),
        map.width,
    );
    let ymin = clip(
        quad.iter().map(|p| p[1]).fold(f64::MAX, f64::min).floor(),
        map.height,
    );
    let ymax = clip(
        quad.iter().map(|p| p[1]).fold(f64::MIN, f64::max).ceil(),
        map.height,
    );
    let (mut sum, mut n) = (0f64, 0usize);
    for y in ymin..=ymax {
        for x in xmin..=xmax {
            if inside(quad, x as f64, y as f64) {
                sum += map.at(x, y) as f64;
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        (sum / n as f64) as f32
    }
}

/// The text boxes of a probability map, in the coordinates of an image of `dest` pixels.
pub fn boxes_from_map(map: &ProbMap, params: &DbParams, dest: (u32, u32)) -> Vec<TextBox> {
    let mut bitmap = GrayImage::from_fn(map.width, map.height, |x, y| {
        Luma([if map.at(x, y) > params.thresh { 255 } else { 0 }])
    });
    if params.use_dilation {
        // cv2.dilate with a 2×2 kernel, anchor at its centre (1, 1): each pixel takes the max
        // over itself and its neighbours up and to the left.
        let src = bitmap.clone();
        for y in 0..map.height {
            for x in 0..map.width {
                let mut v = 0;
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    if x >= dx && y >= dy {
                        v = v.max(src.get_pixel(x - dx, y - dy)[0]);
                    }
                }
                bitmap.put_pixel(x, y, Luma([v]));
            }
        }
    }
    let contours = imageproc::contours::find_contours::<i32>(&bitmap);
    let (sx, sy) = (
        dest.0 as f64 / map.width as f64,
        dest.1 as f64 / map.height as f64,
    );
    let mut out = Vec::new();
    for contour in contours.iter().take(params.max_candidates) {
        let rect = min_area_rect(&contour.points);
        if rect.short_side() < params.min_size as f64 {
            continue;
        }
        let score = box_score(map, &rect.corners());
        if score < params.box_thresh {
            continue;
        }
        let grown = unclip(&rect, params.unclip_ratio as f64);
        if grown.short_side() < params.min_size as f64 + 2.0 {
            continue;
        }
        let corners = grown.corners();
        let points = corners.map(|[x, y]| {
            [
                (x * sx).round().clamp(0.0, dest.0 as f64) as f32,
                (y * sy).round().clamp(0.0, dest.1 as f64) as f32,
            ]
        });
        out.push(TextBox { points, score });
    }
    out
}

/// A `width × height` mask: 255 inside any box (pixel centres), 0 elsewhere.
pub fn boxes_mask(boxes: &[TextBox], width: u32, height: u32) -> GrayImage {
    let mut mask = GrayImage::new(width, height);
    for b in boxes {
        let quad = b.points.map(|[x, y]| [x as f64, y as f64]);
        let x0 = quad
            .iter()
            .map(|p| p[0])
            .fold(f64::MAX, f64::min)
            .floor()
            .max(0.0) as u32;
        let x1 = (quad.iter().map(|p| p[0]).fold(f64::MIN, f64::max).ceil() as u32).min(width);
        let y0 = quad
            .iter()
            .map(|p| p[1])
            .fold(f64::MAX, f64::min)
            .floor()
            .max(0.0) as u32;
        let y1 = (quad.iter().map(|p| p[1]).fold(f64::MIN, f64::max).ceil() as u32).min(height);
        for y in y0..y1 {
            for x in x0..x1 {
                if inside(&quad, x as f64 + 0.5, y as f64 + 0.5) {
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_with(width: u32, height: u32, rects: &[(u32, u32, u32, u32, f32)]) -> ProbMap {
        let mut values = vec![0.02f32; (width * height) as usize];
        for &(x0, y0, x1, y1, p) in rects {
            for y in y0..y1 {
                for x in x0..x1 {
                    values[(y * width + x) as usize] = p;
                }
            }
        }
        ProbMap {
            width,
            height,
            values,
        }
    }

    #[test]
    fn a_rectangle_of_text_gives_one_box_grown_by_the_unclip_offset() {
        // Pixels 10..50 × 20..30 at p = 0.9: the border runs through pixel centres 10..49 and
        // 20..29, a 39 × 9 rectangle; the offset is 39·9·1.5 / (2·48) = 5.484.
        let map = map_with(64, 48, &[(10, 20, 50, 30, 0.9)]);
        let boxes = boxes_from_map(&map, &DbParams::default(), (64, 48));
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let b = &boxes[0];
        assert!((b.score - 0.9).abs() < 1e-6, "{}", b.score);
        let d: f64 = 39.0 * 9.0 * 1.5 / 96.0;
        let want = [
            [10.0 - d, 20.0 - d],
            [49.0 + d, 20.0 - d],
            [49.0 + d, 29.0 + d],
            [10.0 - d, 29.0 + d],
        ];
        for (got, want) in b.points.iter().zip(want) {
            assert_eq!(got[0], want[0].round() as f32, "{:?}", b.points);
            assert_eq!(got[1], want[1].round() as f32, "{:?}", b.points);
        }
        // Mapped to an image twice the size, the corners double.
        let big = boxes_from_map(&map, &DbParams::default(), (128, 96));
        assert_eq!(
            big[0].points[2],
            [
                ((49.0 + d) * 2.0f64).round() as f32,
                ((29.0 + d) * 2.0f64).round() as f32
            ]
        );
    }

    #[test]
    fn thresholds_and_sizes_drop_boxes() {
        // A faint region (0.5: above thresh 0.3, below box_thresh 0.6), a tiny one (2 px high)
        // and a strong one.
        let map = map_with(
            100,
            60,
            &[
                (5, 5, 40, 20, 0.5),
                (50, 5, 90, 7, 0.95),
                (10, 35, 80, 50, 0.8),
            ],
        );
        let p = DbParams::default();
        let boxes = boxes_from_map(&map, &p, (100, 60));
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        assert!((boxes[0].score - 0.8).abs() < 1e-6);
        // A lower box threshold keeps the faint one too; a higher map threshold drops all but
        // the 0.8 and 0.95 regions (and the 0.95 one is too thin either way).
        let lenient = DbParams {
            box_thresh: 0.4,
            ..p
        };
        assert_eq!(boxes_from_map(&map, &lenient, (100, 60)).len(), 2);
        let strict = DbParams { thresh: 0.85, ..p };
        assert_eq!(boxes_from_map(&map, &strict, (100, 60)).len(), 0);
        // A larger unclip ratio grows the box.
        let wide = DbParams {
            unclip_ratio: 3.0,
            ..p
        };
        let (a, b) = (&boxes[0], &boxes_from_map(&map, &wide, (100, 60))[0]);
        assert!(b.points[2][0] - b.points[0][0] > a.points[2][0] - a.points[0][0]);
    }

    #[test]
    fn rotated_regions_get_rotated_rectangles_and_masks_cover_them() {
        // A 45° bar: pixels with |x - y| ≤ 3 inside 10..50.
        let (w, h) = (64u32, 64u32);
        let mut values = vec![0f32; (w * h) as usize];
        for y in 10..50i32 {
            for x in 10..50i32 {
                if (x - y).abs() <= 3 {
                    values[(y as u32 * w + x as u32) as usize] = 0.9;
                }
            }
        }
        let map = ProbMap {
            width: w,
            height: h,
            values,
        };
        let boxes = boxes_from_map(&map, &DbParams::default(), (w, h));
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let p = boxes[0].points;
        let side =
            |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let (s1, s2) = (side(p[0], p[1]), side(p[1], p[2]));
        assert!(
            s1.max(s2) > 4.0 * s1.min(s2),
            "not a thin rotated box: {p:?}"
        );
        let mask = boxes_mask(&boxes, w, h);
        for i in 12..48u32 {
            assert_eq!(mask.get_pixel(i, i)[0], 255, "diagonal pixel {i}");
        }
        assert_eq!(mask.get_pixel(5, 58)[0], 0);
        assert_eq!(mask.get_pixel(58, 5)[0], 0);
    }

    #[test]
    fn dilation_joins_regions_one_pixel_apart() {
        let map = map_with(60, 30, &[(5, 10, 25, 20, 0.9), (26, 10, 50, 20, 0.9)]);
        let plain = boxes_from_map(&map, &DbParams::default(), (60, 30));
        let dilated = DbParams {
            use_dilation: true,
            ..DbParams::default()
        };
        let joined = boxes_from_map(&map, &dilated, (60, 30));
        assert_eq!((plain.len(), joined.len()), (2, 1), "{plain:?} {joined:?}");
    }
}
