//! Still images for the MCU (LAYOUTS.md §3.5): PNG or JPEG decoded once to RGBA, then scaled to
//! the box they are drawn in as a YUV + alpha overlay that `Canvas::blend` composites each frame.

use crate::compose::{Canvas, Rect};
use crate::{init, TranscodeError};
use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

/// PRODUCT.md §12: images are at most 4096×4096 (and 5 MiB, checked by whoever fetches them).
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// A decoded picture, straight RGBA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbaImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// PRODUCT.md §12: image files are at most 5 MiB.
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;

/// Fetches and decodes an `http(s)://` or `data:image/png|jpeg;base64,` image through
/// libavformat (its HTTP/TLS and data: protocols), giving up after `timeout`.
pub fn fetch_image(url: &str, timeout: std::time::Duration) -> Result<RgbaImage, TranscodeError> {
    init();
    let deadline = std::time::Instant::now() + timeout;
    let mut options = ff::Dictionary::new();
    options.set("protocol_whitelist", "http,https,tcp,tls,data");
    options.set("rw_timeout", &timeout.as_micros().to_string());
    let mut input = ff::format::input_with_interrupt_and_dictionary(url, move || std::time::Instant::now() > deadline, options)
        .map_err(|e| TranscodeError::Unsupported(format!("cannot fetch the image: {e}")))?;
    let mut packet = ff::Packet::empty();
    packet.read(&mut input).map_err(|e| TranscodeError::Unsupported(format!("cannot read the image: {e}")))?;
    let data = packet.data().unwrap_or_default();
    if data.len() > MAX_IMAGE_BYTES {
        return Err(TranscodeError::Unsupported(format!("the image is {} bytes; at most {MAX_IMAGE_BYTES}", data.len())));
    }
    decode_image(data)
}

/// Decodes a PNG or JPEG file.
pub fn decode_image(bytes: &[u8]) -> Result<RgbaImage, TranscodeError> {
    init();
    let id = if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        ff::codec::Id::PNG
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        ff::codec::Id::MJPEG
    } else {
        return Err(TranscodeError::Unsupported("not a PNG or JPEG image".into()));
    };
    let codec = ff::decoder::find(id).ok_or(TranscodeError::MissingCodec("image decoder"))?;
    let mut decoder = ff::codec::context::Context::new_with_codec(codec).decoder().video()?;
    decoder.send_packet(&ff::Packet::copy(bytes))?;
    let _ = decoder.send_eof();
    let mut frame = ff::frame::Video::empty();
    decoder.receive_frame(&mut frame).map_err(|_| TranscodeError::Unsupported("the image does not decode".into()))?;
    let (w, h) = (frame.width(), frame.height());
    if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(TranscodeError::Unsupported(format!("the image is {w}x{h}; at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}")));
    }
    let mut rgba = ff::frame::Video::new(Pixel::RGBA, w, h);
    scaling::Context::get(frame.format(), w, h, Pixel::RGBA, w, h, scaling::Flags::BILINEAR)?.run(&frame, &mut rgba)?;
    let stride = rgba.stride(0);
    let mut data = Vec::with_capacity((w * h * 4) as usize);
    for row in 0..h as usize {
        data.extend_from_slice(&rgba.data(0)[row * stride..row * stride + w as usize * 4]);
    }
    Ok(RgbaImage { width: w, height: h, data })
}

/// An image scaled to its box, as YUV420P planes plus full- and half-resolution alpha.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub width: u32,
    pub height: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    a: Vec<u8>,
    a_half: Vec<u8>,
}

impl Overlay {
    /// Scales `image` to `width`×`height` (even): stretched (`cover` false, watermarks: "scaled to
    /// its box") or scaled to cover and centre-cropped (`cover` true, backgrounds: `fill`).
    pub fn new(image: &RgbaImage, width: u32, height: u32, cover: bool) -> Result<Overlay, TranscodeError> {
        init();
        let (width, height) = (width.max(2) & !1, height.max(2) & !1);
        // The source rectangle: all of it, or the centred part with the box's aspect ratio.
        let (sx, sy, sw, sh) = if cover {
            let scale = (width as f64 / image.width as f64).max(height as f64 / image.height as f64);
            let cw = ((width as f64 / scale).round() as u32).clamp(1, image.width);
            let ch = ((height as f64 / scale).round() as u32).clamp(1, image.height);
            ((image.width - cw) / 2, (image.height - ch) / 2, cw, ch)
        } else {
            (0, 0, image.width, image.height)
        };
        let mut src = ff::frame::Video::new(Pixel::RGBA, sw, sh);
        let stride = src.stride(0);
        for row in 0..sh as usize {
            let from = ((sy as usize + row) * image.width as usize + sx as usize) * 4;
            src.data_mut(0)[row * stride..row * stride + sw as usize * 4].copy_from_slice(&image.data[from..from + sw as usize * 4]);
        }
        let mut out = ff::frame::Video::new(Pixel::YUVA420P, width, height);
        scaling::Context::get(Pixel::RGBA, sw, sh, Pixel::YUVA420P, width, height, scaling::Flags::BILINEAR)?.run(&src, &mut out)?;
        let plane = |p: usize, w: usize, h: usize| -> Vec<u8> {
            let stride = out.stride(p);
            (0..h).flat_map(|r| out.data(p)[r * stride..r * stride + w].to_vec()).collect()
        };
        let (w, h) = (width as usize, height as usize);
        let a = plane(3, w, h);
        let a_half = (0..h / 2).flat_map(|r| (0..w / 2).map(move |c| (r, c))).map(|(r, c)| a[(2 * r) * w + 2 * c]).collect();
        Ok(Overlay { width, height, y: plane(0, w, h), u: plane(1, w / 2, h / 2), v: plane(2, w / 2, h / 2), a, a_half })
    }
}

impl Canvas {
    /// Alpha-blends `overlay` with its top-left corner at (x, y) (even), clipped to the canvas.
    pub fn blend(&mut self, overlay: &Overlay, x: u32, y: u32) {
        let (cw, ch) = (self.width() as usize, self.height() as usize);
        let (x, y) = (x as usize & !1, y as usize & !1);
        let w = (overlay.width as usize).min(cw.saturating_sub(x));
        let h = (overlay.height as usize).min(ch.saturating_sub(y));
        if w == 0 || h == 0 {
            return;
        }
        let ow = overlay.width as usize;
        let frame = self.frame_mut();
        let mix = |dst: &mut u8, src: u8, a: u8| {
            *dst = ((src as u32 * a as u32 + *dst as u32 * (255 - a as u32) + 127) / 255) as u8;
        };
        let stride = frame.stride(0);
        let luma = frame.data_mut(0);
        for r in 0..h {
            for c in 0..w {
                mix(&mut luma[(y + r) * stride + x + c], overlay.y[r * ow + c], overlay.a[r * ow + c]);
            }
        }
        for (p, src) in [(1usize, &overlay.u), (2, &overlay.v)] {
            let stride = frame.stride(p);
            let plane = frame.data_mut(p);
            for r in 0..h / 2 {
                for c in 0..w / 2 {
                    mix(&mut plane[(y / 2 + r) * stride + x / 2 + c], src[r * ow / 2 + c], overlay.a_half[r * ow / 2 + c]);
                }
            }
        }
    }

    /// Blends an overlay made for `rect` into it.
    pub fn paint(&mut self, overlay: &Overlay, rect: Rect) {
        self.blend(overlay, rect.x, rect.y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::rgb_to_yuv;

    /// A PNG made by FFmpeg's own encoder: left half opaque red, right half transparent.
    fn png(width: u32, height: u32) -> Vec<u8> {
        init();
        let codec = ff::encoder::find(ff::codec::Id::PNG).unwrap();
        let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().video().unwrap();
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::RGBA);
        enc.set_time_base((1, 25));
        let mut enc = enc.open_as(codec).unwrap();
        let mut f = ff::frame::Video::new(Pixel::RGBA, width, height);
        let stride = f.stride(0);
        for r in 0..height as usize {
            for c in 0..width as usize {
                let px = if c < width as usize / 2 { [255, 0, 0, 255] } else { [0, 0, 255, 0] };
                f.data_mut(0)[r * stride + c * 4..r * stride + c * 4 + 4].copy_from_slice(&px);
            }
        }
        enc.send_frame(&f).unwrap();
        enc.send_eof().unwrap();
        let mut p = ff::Packet::empty();
        enc.receive_packet(&mut p).unwrap();
        p.data().unwrap().to_vec()
    }

    #[test]
    fn png_with_alpha_blends_only_where_opaque() {
        let img = decode_image(&png(64, 32)).unwrap();
        assert_eq!((img.width, img.height), (64, 32));
        let overlay = Overlay::new(&img, 128, 64, false).unwrap();
        let mut c = Canvas::new(320, 180);
        c.fill(Rect { x: 0, y: 0, width: 320, height: 180 }, (0, 255, 0));
        c.blend(&overlay, 100, 50);
        let red = rgb_to_yuv(255, 0, 0);
        let green = rgb_to_yuv(0, 255, 0);
        let close = |a: (u8, u8, u8), b: (u8, u8, u8)| (a.0 as i32 - b.0 as i32).abs() < 8 && (a.1 as i32 - b.1 as i32).abs() < 8 && (a.2 as i32 - b.2 as i32).abs() < 8;
        assert!(close(c.yuv_at(130, 80), red), "opaque half: {:?}", c.yuv_at(130, 80));
        assert!(close(c.yuv_at(200, 80), green), "transparent half: {:?}", c.yuv_at(200, 80));
        assert!(close(c.yuv_at(10, 10), green), "outside the box");
        // Clipped at the canvas edge without panicking.
        c.blend(&overlay, 300, 170);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_image(b"GIF89a....").is_err());
        assert!(decode_image(&[0x89, b'P', b'N', b'G', 0, 0]).is_err());
        assert!(decode_image(&[0xff, 0xd8, 0xff]).is_err());
    }
}
