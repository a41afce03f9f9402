//! Minimal reader and writer for NumPy's `.npy` format (versions 1.0-3.0, C order).
//!
//! Supported element types: `f4`, `f8`, `i1/i2/i4/i8`, `u1/u2/u4/u8`, `b1`, little-endian or
//! byte-sized. Values are returned as `f64` so callers can check integrality themselves.

use std::io::Write;

/// A parsed array: shape plus values widened to f64.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f64>,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses `.npy` bytes. The error string says what is wrong; callers add the path.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (missing \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(format!("unsupported .npy version {major}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("header is truncated")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let quote = descr.chars().next().ok_or("empty 'descr'")?;
    let descr = descr[1..].split(quote).next().ok_or("malformed 'descr'")?;
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported; save with C order".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let inner = shape_text
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension `{s}`"))
        })
        .collect::<Result<_, _>>()?;
    let count: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    let (big_endian, kind) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr),
    };
    if big_endian && !kind.ends_with('1') {
        return Err(format!("big-endian dtype `{descr}` is not supported"));
    }
    let size: usize = kind[1..]
        .parse()
        .map_err(|_| format!("unsupported dtype `{descr}`"))?;
    if data.len() < count * size {
        return Err(format!(
            "data is truncated: shape {shape:?} of `{descr}` needs {} bytes, found {}",
            count * size,
            data.len()
        ));
    }
    let mut values = Vec::with_capacity(count);
    for chunk in data[..count * size].chunks_exact(size) {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(chunk);
        let v = match (&kind[..1], size) {
            ("f", 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            ("f", 8) => f64::from_le_bytes(b),
            ("i", 1) => b[0] as i8 as f64,
            ("i", 2) => i16::from_le_bytes([b[0], b[1]]) as f64,
            ("i", 4) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            ("i", 8) => i64::from_le_bytes(b) as f64,
            ("u", 1) | ("b", 1) => b[0] as f64,
            ("u", 2) => u16::from_le_bytes([b[0], b[1]]) as f64,
            ("u", 4) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            ("u", 8) => u64::from_le_bytes(b) as f64,
            _ => return Err(format!("unsupported dtype `{descr}`")),
        };
        values.push(v);
    }
    Ok(NpyArray { shape, values })
}

/// Finds `'key': value` in the header dict and returns the text of the value.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

/// Element types the writer produces.
#[derive(Debug, Clone, Copy)]
pub enum NpyDtype {
    /// `<f4`
    F32,
    /// `<i8`
    I64,
    /// `|u1`
    U8,
}

/// Writes a version 1.0 `.npy` file of the given dtype (values are cast).
pub fn write(
    out: &mut impl Write,
    shape: &[usize],
    values: &[f64],
    dtype: NpyDtype,
) -> std::io::Result<()> {
    let descr = match dtype {
        NpyDtype::F32 => "<f4",
        NpyDtype::I64 => "<i8",
        NpyDtype::U8 => "|u1",
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that magic(6) + version(2) + len(2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    out.write_all(MAGIC)?;
    out.write_all(&[1, 0])?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for &v in values {
        match dtype {
            NpyDtype::F32 => out.write_all(&(v as f32).to_le_bytes())?,
            NpyDtype::I64 => out.write_all(&(v as i64).to_le_bytes())?,
            NpyDtype::U8 => out.write_all(&[v as u8])?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse_round_trips_each_dtype() {
        for dtype in [NpyDtype::F32, NpyDtype::I64, NpyDtype::U8] {
            let mut buf = Vec::new();
            let vals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
            write(&mut buf, &[2, 3], &vals, dtype).unwrap();
            let arr = parse(&buf).unwrap();
            assert_eq!(arr.shape, vec![2, 3]);
            assert_eq!(arr.values, vals);
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let mut buf = Vec::new();
        write(&mut buf, &[4], &[1.0, 2.0, 3.0, 4.0], NpyDtype::F32).unwrap();
        let err = parse(&buf[..buf.len() - 3]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        assert!(parse(b"hello world, not numpy")
            .unwrap_err()
            .contains("magic"));
    }
}
