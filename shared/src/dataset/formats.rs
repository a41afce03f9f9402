//! Loaders for the supported file formats. Each returns raw feature values (no rescaling).

use super::{npy, Dataset, DatasetError};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The bundled digits set (see `shared/data/README.md` for its provenance).
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

fn malformed(path: &Path, reason: impl Into<String>) -> DatasetError {
    DatasetError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a file, transparently un-gzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let raw = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    gunzip_if_needed(path, raw)
}

fn gunzip_if_needed(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DatasetError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| malformed(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The bundled UCI digits: 1,797 samples of shape [1, 8, 8], pixel values 0..16, 10 classes.
pub fn load_digits() -> Result<Dataset, DatasetError> {
    let path = Path::new("<bundled digits>");
    let text = gunzip_if_needed(path, DIGITS_CSV_GZ.to_vec())?;
    let text = String::from_utf8(text).map_err(|_| malformed(path, "not UTF-8"))?;
    let mut ds = parse_csv(path, &text, None)?;
    ds.sample_shape = vec![1, 8, 8];
    Ok(ds)
}

/// A CSV file: numeric features and one label column (by header name or 0-based index;
/// default the last). A header row is detected when its fields are not all numeric. Integer
/// labels are used as class indices; any other labels are mapped to indices in sorted order.
pub fn load_csv(path: &Path, label_column: Option<&str>) -> Result<Dataset, DatasetError> {
    let bytes = read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|_| malformed(path, "not UTF-8 text"))?;
    parse_csv(path, &text, label_column)
}

fn parse_csv(path: &Path, text: &str, label_column: Option<&str>) -> Result<Dataset, DatasetError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let (_, first) = *lines
        .peek()
        .ok_or_else(|| malformed(path, "the file is empty"))?;
    let first_fields: Vec<&str> = first.split(',').map(str::trim).collect();
    let has_header = first_fields.iter().any(|f| f.parse::<f64>().is_err());
    let ncols = first_fields.len();
    if ncols < 2 {
        return Err(malformed(
            path,
            "need at least one feature column and a label column",
        ));
    }
    let label_idx = match label_column {
        None => ncols - 1,
        Some(c) => match c.parse::<usize>() {
            Ok(i) if i < ncols => i,
            Ok(i) => {
                return Err(malformed(
                    path,
                    format!("label column {i} but only {ncols} columns"),
                ))
            }
            Err(_) if has_header => first_fields
                .iter()
                .position(|f| *f == c)
                .ok_or_else(|| malformed(path, format!("no column named `{c}` in the header")))?,
            Err(_) => {
                return Err(malformed(
                    path,
                    format!("label column `{c}` needs a header row"),
                ))
            }
        },
    };
    if has_header {
        lines.next();
    }
    let mut features = Vec::new();
    let mut raw_labels = Vec::new();
    for (lineno, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != ncols {
            return Err(malformed(
                path,
                format!(
                    "line {}: {} fields, expected {ncols}",
                    lineno + 1,
                    fields.len()
                ),
            ));
        }
        for (j, f) in fields.iter().enumerate() {
            if j == label_idx {
                raw_labels.push(f.to_string());
            } else {
                let v: f32 = f.parse().map_err(|_| {
                    malformed(
                        path,
                        format!(
                            "line {}, column {}: `{f}` is not a number",
                            lineno + 1,
                            j + 1
                        ),
                    )
                })?;
                if !v.is_finite() {
                    return Err(malformed(
                        path,
                        format!("line {}, column {}: not finite", lineno + 1, j + 1),
                    ));
                }
                features.push(v);
            }
        }
    }
    if raw_labels.is_empty() {
        return Err(malformed(path, "no data rows"));
    }
    let (labels, num_classes) = index_labels(&raw_labels);
    Dataset::new(features, labels, vec![ncols - 1], num_classes)
        .map_err(|e| malformed(path, e.to_string()))
}

/// Integer labels are kept as indices; anything else is mapped in sorted order.
fn index_labels(raw: &[String]) -> (Vec<u32>, usize) {
    let ints: Option<Vec<u32>> = raw.iter().map(|s| s.parse::<u32>().ok()).collect();
    match ints {
        Some(ints) => {
            let k = ints.iter().max().map_or(0, |m| *m as usize + 1);
            (ints, k)
        }
        None => {
            let mut names: Vec<&String> = raw.iter().collect();
            names.sort();
            names.dedup();
            let labels = raw
                .iter()
                .map(|s| names.binary_search(&s).unwrap_or(0) as u32)
                .collect();
            (labels, names.len())
        }
    }
}

/// Two `.npy` files: features of shape [N, ...] (any numeric dtype) and integer labels [N].
/// A 2-D features array gives flat samples; 3-D [N, H, W] gives [1, H, W]; 4-D is NCHW.
pub fn load_npy_pair(features: &Path, labels: &Path) -> Result<Dataset, DatasetError> {
    let x = npy::parse(&read_maybe_gz(features)?).map_err(|e| malformed(features, e))?;
    let y = npy::parse(&read_maybe_gz(labels)?).map_err(|e| malformed(labels, e))?;
    if x.shape.len() < 2 {
        return Err(malformed(
            features,
            format!("shape {:?}: need [N, features...]", x.shape),
        ));
    }
    if y.shape.len() != 1 || y.shape[0] != x.shape[0] {
        return Err(malformed(
            labels,
            format!(
                "shape {:?} does not match {} feature rows (need [N])",
                y.shape, x.shape[0]
            ),
        ));
    }
    let mut ints = Vec::with_capacity(y.values.len());
    for (i, &v) in y.values.iter().enumerate() {
        if v < 0.0 || v.fract() != 0.0 || v > u32::MAX as f64 {
            return Err(malformed(
                labels,
                format!("label {i} is {v}, not a class index"),
            ));
        }
        ints.push(v as u32);
    }
    let sample_shape = match x.shape.len() {
        2 => vec![x.shape[1]],
        3 => vec![1, x.shape[1], x.shape[2]],
        _ => x.shape[1..].to_vec(),
    };
    let k = ints.iter().max().map_or(0, |m| *m as usize + 1);
    let feats = x.values.iter().map(|&v| v as f32).collect();
    Dataset::new(feats, ints, sample_shape, k).map_err(|e| malformed(features, e.to_string()))
}

/// CIFAR-10 binary batches: records of 1 label byte + 3,072 pixel bytes (3x32x32, CHW).
pub fn load_cifar10(files: &[PathBuf]) -> Result<Dataset, DatasetError> {
    const RECORD: usize = 1 + 3 * 32 * 32;
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for path in files {
        let bytes = read_maybe_gz(path)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(malformed(
                path,
                format!(
                    "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] > 9 {
                return Err(malformed(
                    path,
                    format!("record {i} has label {} (> 9)", rec[0]),
                ));
            }
            labels.push(rec[0] as u32);
            features.extend(rec[1..].iter().map(|&b| b as f32));
        }
    }
    Dataset::new(features, labels, vec![3, 32, 32], 10)
}

/// MNIST IDX files: unsigned-byte images [N, H, W] and labels [N], optionally gzipped.
pub fn load_mnist(images: &Path, labels: &Path) -> Result<Dataset, DatasetError> {
    let (img_bytes, lbl_bytes) = (read_maybe_gz(images)?, read_maybe_gz(labels)?);
    let (img_shape, img) = parse_idx(images, &img_bytes)?;
    let (lbl_shape, lbl) = parse_idx(labels, &lbl_bytes)?;
    if img_shape.len() != 3 {
        return Err(malformed(
            images,
            format!("expected 3 dimensions, found {:?}", img_shape),
        ));
    }
    if lbl_shape.len() != 1 || lbl_shape[0] != img_shape[0] {
        return Err(malformed(
            labels,
            format!(
                "label shape {lbl_shape:?} does not match {} images",
                img_shape[0]
            ),
        ));
    }
    let labels_u32: Vec<u32> = lbl.iter().map(|&b| b as u32).collect();
    let k = labels_u32.iter().max().map_or(0, |m| *m as usize + 1);
    let features = img.iter().map(|&b| b as f32).collect();
    Dataset::new(features, labels_u32, vec![1, img_shape[1], img_shape[2]], k)
}

/// Parses an IDX file of unsigned bytes; returns its shape and payload.
fn parse_idx<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Vec<usize>, &'a [u8]), DatasetError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(malformed(path, "not an IDX file (bad magic)"));
    }
    if bytes[2] != 0x08 {
        return Err(malformed(
            path,
            format!(
                "element type 0x{:02x} unsupported (need 0x08, u8)",
                bytes[2]
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(malformed(path, "header is truncated"));
    }
    let shape: Vec<usize> = (0..ndims)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4])) as usize
        })
        .collect();
    let count: usize = shape.iter().product();
    let payload = &bytes[header..];
    if payload.len() != count {
        return Err(malformed(
            path,
            format!(
                "shape {shape:?} needs {count} bytes of data, found {}",
                payload.len()
            ),
        ));
    }
    Ok((shape, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn bundled_digits_has_the_documented_shape() {
        let d = load_digits().unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.sample_shape(), &[1, 8, 8]);
        assert_eq!(d.num_classes(), 10);
        assert!(d.features().iter().all(|&v| (0.0..=16.0).contains(&v)));
    }

    #[test]
    fn csv_with_header_and_named_label_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "y,a,b\ncat,1,2\ndog,3,4\ncat,5,6\n").unwrap();
        let d = load_csv(&p, Some("y")).unwrap();
        assert_eq!(d.labels(), &[0, 1, 0]);
        assert_eq!(d.features(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn csv_errors_name_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "1,2,0\n3,x,1\n").unwrap();
        let err = load_csv(&p, None).unwrap_err().to_string();
        assert!(err.contains("line 2, column 2"), "{err}");
        std::fs::write(&p, "1,2,0\n3,1\n").unwrap();
        let err = load_csv(&p, None).unwrap_err().to_string();
        assert!(err.contains("line 2: 2 fields"), "{err}");
    }

    #[test]
    fn npy_pair_images_become_nchw() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
        let vals: Vec<f64> = (0..2 * 3 * 3).map(|v| v as f64).collect();
        npy::write(
            &mut std::fs::File::create(&x).unwrap(),
            &[2, 3, 3],
            &vals,
            npy::NpyDtype::U8,
        )
        .unwrap();
        npy::write(
            &mut std::fs::File::create(&y).unwrap(),
            &[2],
            &[1.0, 0.0],
            npy::NpyDtype::I64,
        )
        .unwrap();
        let d = load_npy_pair(&x, &y).unwrap();
        assert_eq!(d.sample_shape(), &[1, 3, 3]);
        assert_eq!(d.labels(), &[1, 0]);
        npy::write(
            &mut std::fs::File::create(&y).unwrap(),
            &[3],
            &[1.0, 0.0, 1.0],
            npy::NpyDtype::I64,
        )
        .unwrap();
        assert!(load_npy_pair(&x, &y)
            .unwrap_err()
            .to_string()
            .contains("does not match"));
    }

    #[test]
    fn cifar10_records_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data_batch_1.bin");
        let mut bytes = Vec::new();
        for label in [3u8, 7] {
            bytes.push(label);
            bytes.extend((0..3072).map(|i| (i % 256) as u8));
        }
        std::fs::write(&p, &bytes).unwrap();
        let d = load_cifar10(std::slice::from_ref(&p)).unwrap();
        assert_eq!((d.len(), d.labels()), (2, &[3u32, 7][..]));
        assert_eq!(d.sample_shape(), &[3, 32, 32]);
        std::fs::write(&p, &bytes[..5000]).unwrap();
        assert!(load_cifar10(&[p])
            .unwrap_err()
            .to_string()
            .contains("whole number"));
    }

    #[test]
    fn mnist_idx_gzipped_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (ip, lp) = (dir.path().join("img.gz"), dir.path().join("lbl"));
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        img.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&img).unwrap();
        std::fs::write(&ip, gz.finish().unwrap()).unwrap();
        std::fs::write(&lp, [0, 0, 8, 1, 0, 0, 0, 2, 4, 9]).unwrap();
        let d = load_mnist(&ip, &lp).unwrap();
        assert_eq!(d.sample_shape(), &[1, 2, 2]);
        assert_eq!(d.labels(), &[4, 9]);
        std::fs::write(&lp, [0, 0, 8, 1, 0, 0, 0, 3, 4, 9, 1]).unwrap();
        assert!(load_mnist(&ip, &lp)
            .unwrap_err()
            .to_string()
            .contains("does not match"));
    }
}
