//! Reads NumPy `.npy` files (format 1.0-3.0): little-endian float32 or float64, C order,
//! two dimensions. Anything else is refused with a reason naming the header field.

use super::{AnalysisError, Points};

fn bad(why: impl Into<String>) -> AnalysisError {
    AnalysisError::invalid("npy", why)
}

/// The value of `key` in the header dict (`'key': value`), up to the next `,` or `}` outside
/// parentheses.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth == 0 && (c == ',' || c == '}')
        })
        .map_or(rest.len(), |(i, c)| if c == ')' { i + 1 } else { i });
    Some(rest[..end].trim())
}

/// Points from the bytes of a 2-D `.npy` file.
pub fn points(bytes: &[u8]) -> Result<Points, AnalysisError> {
    let (values, n, d) = array2(bytes)?;
    Points::new(values, n, d, "npy")
}

/// The values (as float32, row-major) and shape of a 2-D `.npy` file.
pub fn array2(bytes: &[u8]) -> Result<(Vec<f32>, usize, usize), AnalysisError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (magic string missing)"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("format version {v} is not supported"))),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let descr = field(header, "descr").ok_or_else(|| bad("header has no descr"))?;
    let width = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" => 4,
        "<f8" => 8,
        d => {
            return Err(bad(format!(
                "descr {d}: only little-endian float32 (<f4) and float64 (<f8)"
            )))
        }
    };
    if field(header, "fortran_order") != Some("False") {
        return Err(bad("fortran_order: only C-order arrays"));
    }
    let shape = field(header, "shape").ok_or_else(|| bad("header has no shape"))?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| bad(format!("shape {shape} is not a tuple of integers")))
        })
        .collect::<Result<_, _>>()?;
    let [n, d] = dims[..] else {
        return Err(bad(format!("shape {shape}: must be a 2-D array")));
    };
    let data = &bytes[start + len..];
    if data.len() != n * d * width {
        return Err(bad(format!(
            "{} data bytes for shape ({n}, {d}) of {width}-byte values",
            data.len()
        )));
    }
    let values: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect()
    };
    Ok((values, n, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_float32_and_float64_and_names_what_is_wrong() {
        let f: Vec<u8> = [0f32, 1., 2., 3., 4., 5.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = points(&npy("<f4", "(3, 2)", &f)).unwrap();
        assert_eq!((p.n, p.d, p.data[5]), (3, 2, 5.0));
        let g: Vec<u8> = [0f64, 1., 2., 3., 4., 5.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = points(&npy("<f8", "(2, 3)", &g)).unwrap_err();
        assert!(p.to_string().contains("2 distinct"), "{p}");
        let p = points(&npy("<f8", "(3, 2)", &g)).unwrap();
        assert_eq!(p.data[3], 3.0);
        for (bytes, want) in [
            (npy("<i4", "(3, 2)", &f), "descr <i4"),
            (npy("<f4", "(6,)", &f), "2-D"),
            (npy("<f4", "(4, 2)", &f), "24 data bytes"),
            (b"hello world".to_vec(), "magic"),
        ] {
            let e = points(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
