//! The serving KV cache: per layer, keys and values for a fixed number of sequence slots,
//! `(slots, kv_heads, capacity, head_dim)`. A running sequence owns one slot; its position `p`
//! lives at index `p` along the capacity axis. Capacity starts small and doubles (up to the
//! model's context) when a sequence outgrows it, so memory follows the longest live sequence.
//!
//! Invariant: positions beyond a slot's current length hold stale data; every reader masks keys
//! past its own position, so stale entries are never attended to.

use tch::{Device, Kind, Tensor};

/// Keys and values of every slot, per layer.
#[derive(Debug)]
pub struct SlotKv {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    slots: i64,
    kv_heads: i64,
    head_dim: i64,
    capacity: i64,
    max_capacity: i64,
    device: Device,
}

impl SlotKv {
    /// An empty cache for `slots` sequences of up to `max_len` positions.
    pub fn new(
        layers: usize,
        slots: usize,
        kv_heads: usize,
        head_dim: usize,
        max_len: usize,
        device: Device,
    ) -> Self {
        let mut c = Self {
            k: Vec::new(),
            v: Vec::new(),
            slots: slots as i64,
            kv_heads: kv_heads as i64,
            head_dim: head_dim as i64,
            capacity: 0,
            max_capacity: max_len as i64,
            device,
        };
        c.k.resize_with(layers, || Tensor::zeros([0], (Kind::Float, device)));
        c.v.resize_with(layers, || Tensor::zeros([0], (Kind::Float, device)));
        c.ensure(64.min(max_len as i64));
        c
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots as usize
    }

    /// Positions each slot can hold now.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * (self.slots * self.kv_heads * self.capacity * self.head_dim) as usize * 4
    }

    /// Grows every layer to hold at least `len` positions (doubling, capped at the context).
    pub fn ensure(&mut self, len: i64) {
        if len <= self.capacity {
            return;
        }
        let mut cap = self.capacity.max(1);
        while cap < len {
            cap *= 2;
        }
        let cap = cap.min(self.max_capacity).max(len);
        let _g = tch::no_grad_guard();
        let shape = [self.slots, self.kv_heads, cap, self.head_dim];
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            let grown = Tensor::zeros(shape, (Kind::Float, self.device));
            if self.capacity > 0 {
                grown.narrow(2, 0, self.capacity).copy_(t);
            }
            *t = grown;
        }
        self.capacity = cap;
    }

    /// Stores a prompt's keys and values (1, kv_heads, T, head_dim) at positions 0..T of `slot`.
    pub fn write_prefix(&mut self, layer: usize, slot: i64, k: &Tensor, v: &Tensor) {
        let t = k.size()[2];
        self.k[layer].narrow(0, slot, 1).narrow(2, 0, t).copy_(k);
        self.v[layer].narrow(0, slot, 1).narrow(2, 0, t).copy_(v);
    }

    /// Stores one position per row: `k`, `v` (S, kv_heads, head_dim) at (`slots[i]`, `pos[i]`).
    pub fn write_rows(
        &mut self,
        layer: usize,
        slots: &Tensor,
        pos: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) {
        let idx = [Some(slots.shallow_clone()), None, Some(pos.shallow_clone())];
        let _ = self.k[layer].index_put_(&idx, k, false);
        let _ = self.v[layer].index_put_(&idx, v, false);
    }

    /// Keys and values (S, kv_heads, len, head_dim) of `slots` (a view when they are
    /// consecutive, a gather otherwise).
    pub fn read(
        &self,
        layer: usize,
        slots: &[i64],
        slots_t: &Tensor,
        consecutive: bool,
        len: i64,
    ) -> (Tensor, Tensor) {
        let pick = |t: &Tensor| {
            let t = t.narrow(2, 0, len);
            if consecutive {
                t.narrow(0, slots[0], slots.len() as i64)
            } else {
                t.index_select(0, slots_t)
            }
        };
        (pick(&self.k[layer]), pick(&self.v[layer]))
    }
}
