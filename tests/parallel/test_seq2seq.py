"""The plain-PyTorch HybridNMT model: chunking, padding, input feeding, device placement."""
import torch

from fairseq_efficiency.parallel.pipeline import DevicePipeline
from fairseq_efficiency.parallel.seq2seq import HybridSeq2Seq, batch_bounds, chunk_bounds
from tests.parallel import workers as W


def test_bounds_cover_range():
    assert chunk_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert chunk_bounds(2, 5) == [(0, 1), (1, 2)]
    assert batch_bounds(3, 4) == [(0, 1), (1, 2), (2, 3), (3, 3)]


def test_chunked_equals_unchunked_with_full_bptt():
    src, prev, tgt = W.ragged_batch(4, 9, 7)
    ref_loss, ref_grads = W.reference(2, (4, 9, 7))
    for chunks in (2, 4, 9):
        model = W.tiny_model(2)
        loss = W.loss_of(model(src, prev, chunks=chunks)[0], tgt)
        loss.backward()
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():  # BPTT crosses chunk borders: grads agree
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-6)


def test_final_state_is_taken_at_last_real_token():
    model = W.tiny_model(2)
    src, _, _ = W.ragged_batch(3, 6, 4)
    _, finals, _ = model.encoder(src, chunks=3)
    for i in range(3):  # each sentence alone, without padding
        n = int(src[i].ne(W.PAD).sum())
        _, alone, _ = model.encoder(src[i:i + 1, :n], chunks=1)
        for (h, c), (h1, c1) in zip(finals, alone):
            torch.testing.assert_close(h[i:i + 1], h1)
            torch.testing.assert_close(c[i:i + 1], c1)


def test_decoder_starts_from_encoder_final_states():
    model = W.tiny_model(2)
    src, prev, _ = W.ragged_batch(2, 5, 4)
    S, finals, pad = model.encoder(src)
    H = model.decoder.states(prev, finals)
    zero = [(torch.zeros_like(h), torch.zeros_like(c)) for h, c in finals]
    assert not torch.allclose(H, model.decoder.states(prev, zero))


def test_incremental_steps_match_full_forward():
    for feeding in (False, True):
        torch.manual_seed(0)
        model = HybridSeq2Seq(W.VOCAB, W.VOCAB, W.PAD, 6, 8, 2, input_feeding=feeding).eval()
        src, prev, _ = W.ragged_batch(3, 5, 4)
        prev = prev.masked_fill(prev.eq(W.PAD), 5)  # no padding inside the prefix
        S, finals, pad = model.encoder(src)
        full, attn = model.decoder(prev, S, finals, pad)
        states, hc, steps = finals, None, []
        for t in range(prev.size(1)):
            lo, _, states, hc = model.decoder.step(prev[:, t], S, states, pad, hc)
            steps.append(lo)
        torch.testing.assert_close(torch.cat(steps, 1), full)
        assert torch.allclose(attn.sum(-1), torch.ones(()))  # eq. 1 normalises over source
        assert not attn.masked_select(pad.unsqueeze(1).expand_as(attn)).any()


def test_device_pipeline_keeps_placement_and_matches(monkeypatch):
    """Single-process multi-device schedule, run with every stage on 'cpu' (no GPU here)."""
    src, prev, tgt = W.ragged_batch(5, 7, 6)
    ref_loss, ref_grads = W.reference(4, (5, 7, 6))
    model = W.tiny_model(4)
    pipe = DevicePipeline(model.encoder, model.decoder, [1, 2, 1], ["cpu", "cpu", "cpu"],
                          chunks=3)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to",
                        lambda self, *a, **k: moved.append((self, a)) or self)
    pipe.place()
    owners = {id(m): a[0] for m, a in moved}
    assert owners[id(model.encoder.layers[0])] == torch.device("cpu")
    assert len(moved) == 2 + 8 + 1  # embeddings, 4+4 layers, head
    monkeypatch.undo()
    assert pipe.stage_of_layer == [0, 1, 1, 2]
    logits, _ = pipe(src, prev)
    loss = W.loss_of(logits, tgt)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-6)
