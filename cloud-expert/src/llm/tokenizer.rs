//! Byte-level BPE (the GPT-2 family, which SmolLM2 and most LLaMA-style GGUF `gpt2` tokenizers
//! use), built from a GGUF file's `tokenizer.ggml.*` metadata or a Hugging Face `tokenizer.json`,
//! plus the model's chat template (Jinja, rendered with minijinja).
//!
//! Encoding: special (control / added) tokens are split out first; the rest is pre-tokenised with
//! GPT-2's pattern ``'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+``
//! (hand-written below, since it needs a look-ahead; letters are Rust's `is_alphabetic`, which also
//! admits the few combining marks Unicode calls alphabetic), every byte is mapped to its printable
//! stand-in character, and merges are applied lowest rank first.
//!
//! Invariant: `decode(encode(s)) == s` for any string without special-token text (tested).

use std::collections::{HashMap, HashSet};

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required field is missing or has the wrong type.
    #[error("tokenizer: {0}")]
    Invalid(String),
    /// A tokenizer type this module does not implement.
    #[error("tokenizer: unsupported {0}")]
    Unsupported(String),
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
}

/// A chat message for the template.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

/// A byte-level BPE tokenizer with its special tokens and chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    vocab: HashMap<String, u32>,
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens, longest first (matched greedily in input text).
    special: Vec<(String, u32)>,
    special_ids: HashSet<u32>,
    /// Byte -> printable stand-in, and back.
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token (generation stops on it).
    pub eos: Option<u32>,
    /// Whether `encode` prepends `bos`.
    pub add_bos: bool,
    /// The chat template (Jinja), if the model has one.
    pub chat_template: Option<String>,
}

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the others to
/// U+0100 upwards in byte order.
fn byte_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    table
}

impl Tokenizer {
    /// Builds a tokenizer from id-ordered token strings, merges in rank order (`"a b"`), and the
    /// ids of special tokens.
    pub fn new(
        tokens: Vec<String>,
        merges: &[String],
        special_ids: HashSet<u32>,
    ) -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merge_map = HashMap::new();
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| TokenizerError::Invalid(format!("merge `{m}` has no space")))?;
            let (Some(&ia), Some(&ib), Some(&im)) =
                (vocab.get(a), vocab.get(b), vocab.get(&format!("{a}{b}")))
            else {
                return Err(TokenizerError::Invalid(format!(
                    "merge `{m}` names a token that is not in the vocabulary"
                )));
            };
            merge_map.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let mut special: Vec<(String, u32)> = special_ids
            .iter()
            .filter_map(|&i| tokens.get(i as usize).map(|t| (t.clone(), i)))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        special.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let byte_char = byte_table();
        let char_byte = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Self {
            tokens,
            vocab,
            merges: merge_map,
            special,
            special_ids,
            byte_char,
            char_byte,
            bos: None,
            eos: None,
            add_bos: false,
            chat_template: None,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// Token ids for `text`: special tokens in the text are recognised, and `bos` is prepended
    /// when the model asks for it and the text does not already start with it.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let hit = self
                .special
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, s.len(), *id)))
                .min_by_key(|&(p, len, _)| (p, std::cmp::Reverse(len)));
            let (plain, next) = match hit {
                Some((p, len, id)) => {
                    let plain = &rest[..p];
                    self.encode_plain(plain, &mut out);
                    out.push(id);
                    (None, &rest[p + len..])
                }
                None => (Some(rest), ""),
            };
            if let Some(plain) = plain {
                self.encode_plain(plain, &mut out);
            }
            rest = next;
        }
        if self.add_bos {
            if let Some(bos) = self.bos {
                if out.first() != Some(&bos) {
                    out.insert(0, bos);
                }
            }
        }
        out
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        for piece in pretokenize(text) {
            let mut ids: Vec<u32> = piece
                .bytes()
                .filter_map(|b| {
                    let mut buf = [0u8; 4];
                    let s = self.byte_char[b as usize].encode_utf8(&mut buf);
                    self.vocab.get(&*s).copied()
                })
                .collect();
            loop {
                let best = ids
                    .windows(2)
                    .enumerate()
                    .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(r, m)| (r, i, m)))
                    .min();
                let Some((_, i, merged)) = best else { break };
                ids[i] = merged;
                ids.remove(i + 1);
            }
            out.extend(ids);
        }
    }

    /// The bytes a token stands for (special tokens give their text only when `specials`).
    pub fn token_bytes(&self, id: u32, specials: bool) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.special_ids.contains(&id) {
            return if specials {
                t.as_bytes().to_vec()
            } else {
                Vec::new()
            };
        }
        let mut bytes = Vec::with_capacity(t.len());
        for c in t.chars() {
            match self.char_byte.get(&c) {
                Some(&b) => bytes.push(b),
                None => bytes.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
            }
        }
        bytes
    }

    /// Text for `ids`, skipping special tokens; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i, false))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Renders the chat template for `messages` with the assistant's turn opened.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            TokenizerError::Template("the model has no chat template; use /v1/completions".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", tpl)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let name = |id: Option<u32>| {
            id.and_then(|i| self.tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => name(self.bos),
                    eos_token => name(self.eos),
                })
            })
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }

    /// The id-ordered token strings (for writing fixtures).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Merges in rank order as `"a b"` strings (for writing fixtures).
    pub fn merge_strings(&self) -> Vec<String> {
        let mut m: Vec<(u32, String)> = self
            .merges
            .iter()
            .map(|(&(a, b), &(r, _))| {
                (
                    r,
                    format!("{} {}", self.tokens[a as usize], self.tokens[b as usize]),
                )
            })
            .collect();
        m.sort();
        m.into_iter().map(|(_, s)| s).collect()
    }

    /// The ids of special tokens.
    pub fn special_ids(&self) -> &HashSet<u32> {
        &self.special_ids
    }

    /// A byte-level tokenizer trained greedily on `corpus` (most frequent adjacent pair first,
    /// within pre-tokenised words) with `n_merges` merges, plus ChatML special tokens and
    /// template: a small real tokenizer for test fixtures.
    pub fn train_byte_level(corpus: &str, n_merges: usize) -> Self {
        let table = byte_table();
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .map(String::from)
            .to_vec();
        tokens.extend(table.iter().map(|c| c.to_string()));
        let mut words: Vec<Vec<String>> = pretokenize(corpus)
            .map(|w| w.bytes().map(|b| table[b as usize].to_string()).collect())
            .collect();
        let mut merges = Vec::new();
        for _ in 0..n_merges {
            let mut counts: HashMap<(String, String), usize> = HashMap::new();
            for w in &words {
                for p in w.windows(2) {
                    *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
                }
            }
            let Some(((a, b), _)) = counts
                .into_iter()
                .max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0)))
            else {
                break;
            };
            let joined = format!("{a}{b}");
            for w in &mut words {
                let mut i = 0;
                while i + 1 < w.len() {
                    if w[i] == a && w[i + 1] == b {
                        w[i] = joined.clone();
                        w.remove(i + 1);
                    }
                    i += 1;
                }
            }
            merges.push(format!("{a} {b}"));
            tokens.push(joined);
        }
        let mut t = Self::new(tokens, &merges, HashSet::from([0, 1, 2]))
            .unwrap_or_else(|e| unreachable!("trained merges are consistent: {e}"));
        t.bos = Some(1);
        t.eos = Some(2);
        t.chat_template = Some(CHATML.into());
        t
    }
}

/// A plain ChatML template (the fixtures' template; SmolLM2 carries its own in its metadata).
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Character class for the GPT-2 pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Number
    } else {
        Class::Other
    }
}

/// Splits text as GPT-2's pre-tokeniser regex does.
pub fn pretokenize(text: &str) -> impl Iterator<Item = &str> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= text.len() {
            return None;
        }
        let start = pos;
        let end = next_piece(text, start);
        pos = end;
        Some(&text[start..end])
    })
}

/// End (byte offset) of the piece starting at `start`.
fn next_piece(text: &str, start: usize) -> usize {
    let rest = &text[start..];
    if let Some(after) = rest.strip_prefix('\'') {
        for suffix in ["re", "ve", "ll", "s", "t", "m", "d"] {
            if after.starts_with(suffix) {
                return start + 1 + suffix.len();
            }
        }
    }
    let mut chars = rest.char_indices().peekable();
    let Some((_, first)) = chars.next() else {
        return text.len();
    };
    // ` ?X+` for letters, numbers and other symbols.
    let (run_class, run_start) = match (first, chars.peek()) {
        (' ', Some(&(i, c))) if class(c) != Class::Space => (class(c), i),
        _ if class(first) != Class::Space => (class(first), 0),
        _ => (Class::Space, 0),
    };
    if run_class != Class::Space {
        let run = &rest[run_start..];
        let len = run
            .char_indices()
            .find(|&(_, c)| class(c) != run_class)
            .map_or(run.len(), |(i, _)| i);
        return start + run_start + len;
    }
    // Whitespace: `\s+(?!\S)` then `\s+`.
    let len = rest
        .char_indices()
        .find(|&(_, c)| !c.is_whitespace())
        .map_or(rest.len(), |(i, _)| i);
    if start + len == text.len() {
        return text.len();
    }
    let last = rest[..len].char_indices().last().map_or(0, |(i, _)| i);
    if last > 0 {
        start + last
    } else {
        start + len
    }
}

/// Turns a stream of token ids into text pieces that are always whole UTF-8 characters.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Text completed by `id` (possibly empty while a character is still partial).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend(tok.token_bytes(id, false));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let out: Vec<u8> = self.pending.drain(..valid).collect();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &str = "the cat sat on the mat. The cat's hat is 12 345 wide!\n\n  spaces  here\tand there, naïve café 😀";

    #[test]
    fn pretokenisation_follows_the_gpt2_pattern() {
        let pieces: Vec<&str> = pretokenize("Hello world's  12ab  x\n\nfoo!? ").collect();
        assert_eq!(
            pieces,
            ["Hello", " world", "'s", " ", " 12", "ab", " ", " x", "\n", "\n", "foo", "!?", " "]
        );
        let pieces: Vec<&str> = pretokenize("a \nb").collect();
        assert_eq!(pieces, ["a", " ", "\n", "b"]);
    }

    #[test]
    fn encoding_round_trips_and_uses_merges_and_specials() {
        let t = Tokenizer::train_byte_level(CORPUS, 40);
        assert_eq!(t.vocab_size(), 3 + 256 + 40);
        for s in [CORPUS, "unseen words ∑ and \u{0}bytes", "", "  "] {
            let ids = t.encode(s);
            assert_eq!(t.decode(&ids), s);
            // Merges make common text shorter than its bytes.
            if s == CORPUS {
                assert!(ids.len() < s.len() * 3 / 4, "{} vs {}", ids.len(), s.len());
            }
        }
        let ids = t.encode("<|im_start|>user\nhi<|im_end|>");
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(t.decode(&ids), "user\nhi");
        let mut with_bos = t.clone();
        with_bos.add_bos = true;
        assert_eq!(with_bos.encode("the")[0], 1);
        assert_eq!(
            with_bos
                .encode("<|im_start|>the")
                .iter()
                .filter(|&&i| i == 1)
                .count(),
            1
        );
    }

    #[test]
    fn streaming_decode_never_splits_a_character() {
        let t = Tokenizer::train_byte_level(CORPUS, 10);
        let ids = t.encode("é😀x");
        let mut d = StreamDecoder::default();
        let pieces: Vec<String> = ids.iter().map(|&i| d.push(&t, i)).collect();
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
        assert_eq!(pieces.concat() + &d.finish(), "é😀x");
    }

    #[test]
    fn chat_template_renders_chatml() {
        let t = Tokenizer::train_byte_level(CORPUS, 10);
        let s = t
            .apply_chat_template(&[ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            }])
            .unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let mut bad = t.clone();
        bad.chat_template = Some("{{ raise_exception('no system role') }}".into());
        let e = bad.apply_chat_template(&[]).unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
    }

    #[test]
    fn merges_must_name_known_tokens() {
        let e = Tokenizer::new(vec!["a".into()], &["a b".into()], HashSet::new()).unwrap_err();
        assert!(e.to_string().contains("a b"), "{e}");
    }
}
