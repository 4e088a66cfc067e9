"""tfduch.codes: one sign, one packing order, Hamming distances that agree packed and unpacked."""

import numpy as np
import pytest

from tfduch import codes


def test_sign_maps_zero_to_plus_one() -> None:
    out = codes.sign(np.array([[-0.5, 0.0, 2.0, -0.0]]))
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [[-1, 1, 1, 1]])


def test_pack_order_is_big_endian_bit_one_for_plus_one() -> None:
    c = -np.ones((1, 16), np.int8)
    c[0, 0] = 1  # first code bit -> most significant bit of the first byte
    c[0, 15] = 1  # last code bit -> least significant bit of the second byte
    packed = codes.pack_codes(c)
    np.testing.assert_array_equal(packed, [[0x80, 0x01]])
    assert codes.packed_hex(c) == ["8001"]
    np.testing.assert_array_equal(codes.unpack_codes(packed, 16), c)


def test_packed_and_unpacked_distances_agree() -> None:
    rng = np.random.default_rng(0)
    q = codes.sign(rng.normal(size=(7, 64)))
    db = codes.sign(rng.normal(size=(31, 64)))
    d = codes.hamming_distances(q, db, block_elements=50)
    np.testing.assert_array_equal(d, (q[:, None, :] != db[None, :, :]).sum(-1))
    np.testing.assert_array_equal(codes.hamming_distances_packed(codes.pack_codes(q), codes.pack_codes(db)), d)


def test_tf_versions_match_numpy() -> None:
    tf = pytest.importorskip("tensorflow")
    h = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
    h[0, 0] = 0.0
    c = codes.tf_sign(tf.constant(h))
    np.testing.assert_array_equal(c.numpy(), codes.sign(h))
    np.testing.assert_array_equal(codes.tf_pack(c).numpy(), codes.pack_codes(codes.sign(h)))


def test_bad_codes_are_named() -> None:
    with pytest.raises(ValueError, match="query codes"):
        codes.check_code_pair(np.zeros((2, 3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="8 bits but database codes have 16"):
        codes.check_code_pair(np.ones((1, 8)), np.ones((1, 16)))
