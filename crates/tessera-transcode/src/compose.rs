//! The MCU's canvas: a YUV420P picture that tiles are drawn into. Drawing scales a decoded frame
//! straight into the canvas with swscale (SIMD, bilinear), cropping the source for `fill` and
//! padding for `fit` by pointing swscale at sub-rectangles, so nothing is allocated per frame.

use crate::{init, TranscodeError};
use ff::ffi;
use ff::format::Pixel;
use ffmpeg_next as ff;

/// `(Y, U, V)` of an sRGB colour (BT.601, limited range: what H.264 decoders assume).
pub fn rgb_to_yuv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let (r, g, b) = (r as f64, g as f64, b as f64);
    let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    (y.round().clamp(0.0, 255.0) as u8, u.round().clamp(0.0, 255.0) as u8, v.round().clamp(0.0, 255.0) as u8)
}

/// A rectangle on the canvas (even coordinates and sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

pub struct Canvas {
    frame: ff::frame::Video,
    /// One cached swscale context per tile index (re-made only when sizes change).
    scalers: Vec<*mut ffi::SwsContext>,
}

// SAFETY: the frame and the swscale contexts are owned by this value and used through `&mut self`.
unsafe impl Send for Canvas {}

impl Drop for Canvas {
    fn drop(&mut self) {
        for s in self.scalers.drain(..) {
            if !s.is_null() {
                // SAFETY: made by sws_getCachedContext and freed once.
                unsafe { ffi::sws_freeContext(s) };
            }
        }
    }
}

impl Canvas {
    pub fn new(width: u32, height: u32) -> Canvas {
        init();
        Canvas { frame: ff::frame::Video::new(Pixel::YUV420P, width, height), scalers: Vec::new() }
    }

    pub fn width(&self) -> u32 {
        self.frame.width()
    }

    pub fn height(&self) -> u32 {
        self.frame.height()
    }

    pub fn frame_mut(&mut self) -> &mut ff::frame::Video {
        &mut self.frame
    }

    pub fn frame(&self) -> &ff::frame::Video {
        &self.frame
    }

    /// Paints `rect` (clipped to the canvas) with one colour.
    pub fn fill(&mut self, rect: Rect, rgb: (u8, u8, u8)) {
        let (y, u, v) = rgb_to_yuv(rgb.0, rgb.1, rgb.2);
        let x0 = rect.x.min(self.width()) as usize & !1;
        let y0 = rect.y.min(self.height()) as usize & !1;
        let x1 = (rect.x + rect.width).min(self.width()) as usize;
        let y1 = (rect.y + rect.height).min(self.height()) as usize;
        if x1 <= x0 || y1 <= y0 {
            return;
        }
        for (plane, value, shift) in [(0usize, y, 0usize), (1, u, 1), (2, v, 1)] {
            let stride = self.frame.stride(plane);
            let data = self.frame.data_mut(plane);
            for row in (y0 >> shift)..(y1.div_ceil(1 << shift)) {
                let start = row * stride;
                data[start + (x0 >> shift)..start + x1.div_ceil(1 << shift)].fill(value);
            }
        }
    }

    /// Draws `source` into `rect`: `fill` scales to cover and centre-crops; `fit` scales to fit,
    /// centres, and paints the rest with `background`. `slot` picks the cached scaler.
    pub fn draw(&mut self, slot: usize, source: &ff::frame::Video, rect: Rect, fill: bool, background: (u8, u8, u8)) -> Result<(), TranscodeError> {
        let (sw, sh) = (source.width(), source.height());
        if sw < 2 || sh < 2 || rect.width < 2 || rect.height < 2 {
            return Ok(());
        }
        let croppable = matches!(source.format(), Pixel::YUV420P | Pixel::YUVJ420P);
        let (src, dst) = if fill && croppable {
            // The largest centred source rectangle with the tile's aspect ratio.
            let scale = (rect.width as f64 / sw as f64).max(rect.height as f64 / sh as f64);
            let cw = ((rect.width as f64 / scale).round() as u32).clamp(2, sw) & !1;
            let ch = ((rect.height as f64 / scale).round() as u32).clamp(2, sh) & !1;
            (Rect { x: ((sw - cw) / 2) & !1, y: ((sh - ch) / 2) & !1, width: cw, height: ch }, rect)
        } else {
            let scale = (rect.width as f64 / sw as f64).min(rect.height as f64 / sh as f64);
            let dw = ((sw as f64 * scale) as u32).clamp(2, rect.width) & !1;
            let dh = ((sh as f64 * scale) as u32).clamp(2, rect.height) & !1;
            if !fill && (dw, dh) != (rect.width, rect.height) {
                self.fill(rect, background);
            }
            let dst = Rect { x: (rect.x + (rect.width - dw) / 2) & !1, y: (rect.y + (rect.height - dh) / 2) & !1, width: dw, height: dh };
            (Rect { x: 0, y: 0, width: sw & !1, height: sh & !1 }, dst)
        };
        if dst.x + dst.width > self.width() || dst.y + dst.height > self.height() {
            return Ok(());
        }
        while self.scalers.len() <= slot {
            self.scalers.push(std::ptr::null_mut());
        }
        // SAFETY: pointers are offset inside the planes of frames that outlive the call, within
        // the rectangles checked above; strides are the frames' own. For non-YUV420P sources
        // the whole picture is used (no offsets).
        unsafe {
            let ctx = ffi::sws_getCachedContext(
                self.scalers[slot],
                src.width as i32,
                src.height as i32,
                ffi::AVPixelFormat::from(source.format()),
                dst.width as i32,
                dst.height as i32,
                ffi::AVPixelFormat::AV_PIX_FMT_YUV420P,
                #[allow(clippy::unnecessary_cast)] // its type differs between FFmpeg versions' bindings
                {
                    ffi::SWS_BILINEAR as i32
                },
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null(),
            );
            if ctx.is_null() {
                return Err(TranscodeError::Unsupported("swscale cannot convert this frame".into()));
            }
            self.scalers[slot] = ctx;
            let s = source.as_ptr();
            let mut src_planes: [*const u8; 4] = std::array::from_fn(|p| (*s).data[p] as *const u8);
            let src_strides: [i32; 4] = std::array::from_fn(|p| (*s).linesize[p]);
            if croppable {
                for p in 0..3 {
                    let (x, y) = if p == 0 { (src.x, src.y) } else { (src.x / 2, src.y / 2) };
                    src_planes[p] = src_planes[p].offset(y as isize * src_strides[p] as isize + x as isize);
                }
            }
            let d = self.frame.as_mut_ptr();
            let mut dst_planes = [std::ptr::null_mut::<u8>(); 4];
            let mut dst_strides = [0i32; 4];
            for p in 0..3 {
                let (x, y) = if p == 0 { (dst.x, dst.y) } else { (dst.x / 2, dst.y / 2) };
                dst_strides[p] = (*d).linesize[p];
                dst_planes[p] = (*d).data[p].offset(y as isize * dst_strides[p] as isize + x as isize);
            }
            ffi::sws_scale(ctx, src_planes.as_ptr(), src_strides.as_ptr(), 0, src.height as i32, dst_planes.as_ptr(), dst_strides.as_ptr());
        }
        Ok(())
    }

    /// The colour at (x, y), for tests.
    pub fn yuv_at(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let (x, y) = (x as usize, y as usize);
        (self.frame.data(0)[y * self.frame.stride(0) + x], self.frame.data(1)[(y / 2) * self.frame.stride(1) + x / 2], self.frame.data(2)[(y / 2) * self.frame.stride(2) + x / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(width: u32, height: u32, rgb: (u8, u8, u8)) -> ff::frame::Video {
        let mut c = Canvas::new(width, height);
        c.fill(Rect { x: 0, y: 0, width, height }, rgb);
        let mut f = ff::frame::Video::new(Pixel::YUV420P, width, height);
        f.clone_from(c.frame());
        f
    }

    fn close(a: (u8, u8, u8), b: (u8, u8, u8)) -> bool {
        (a.0 as i32 - b.0 as i32).abs() <= 3 && (a.1 as i32 - b.1 as i32).abs() <= 3 && (a.2 as i32 - b.2 as i32).abs() <= 3
    }

    #[test]
    fn fill_crops_and_fit_pads_with_the_background() {
        let red = (220, 20, 20);
        let blue = (20, 20, 220);
        let mut c = Canvas::new(640, 360);
        c.fill(Rect { x: 0, y: 0, width: 640, height: 360 }, (0, 0, 0));
        // A 4:3 red source with a blue left half... keep it simple: all red, drawn fit into a
        // wide tile: the sides stay the tile background (blue), the middle is red.
        let src = solid(320, 240, red);
        c.draw(0, &src, Rect { x: 0, y: 0, width: 320, height: 120 }, false, blue).unwrap();
        assert!(close(c.yuv_at(160, 60), rgb_to_yuv(red.0, red.1, red.2)), "centre is the picture");
        assert!(close(c.yuv_at(10, 60), rgb_to_yuv(blue.0, blue.1, blue.2)), "sides are padded");
        // Fill covers the whole tile.
        c.draw(1, &src, Rect { x: 320, y: 0, width: 320, height: 120 }, true, blue).unwrap();
        assert!(close(c.yuv_at(330, 60), rgb_to_yuv(red.0, red.1, red.2)));
        assert!(close(c.yuv_at(630, 110), rgb_to_yuv(red.0, red.1, red.2)));
        // Nothing outside the tiles was touched.
        assert!(close(c.yuv_at(320, 300), rgb_to_yuv(0, 0, 0)));
    }

    #[test]
    fn colours_convert_like_bt601_limited_range() {
        assert_eq!(rgb_to_yuv(0, 0, 0), (16, 128, 128));
        assert_eq!(rgb_to_yuv(255, 255, 255), (235, 128, 128));
        let (y, u, v) = rgb_to_yuv(255, 0, 0);
        assert!(y == 81 && u < 100 && v > 230);
    }
}
