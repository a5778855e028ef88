import numpy as np

from batching import assembly


def test_stack_pads_ragged_text_to_the_longest_with_its_pad_value() -> None:
    a = {"ids": np.array([[5, 6]]), "mask": np.array([[1, 1]]), "img": np.ones((1, 3))}
    b = {
        "ids": np.array([[7, 8, 9, 4], [1, 2, 3, 4]]),
        "mask": np.ones((2, 4), int),
        "img": np.zeros((2, 3)),
    }
    batch = assembly.stack([a, b], pad_values={"ids": 0})
    assert batch["ids"].tolist() == [[5, 6, 0, 0], [7, 8, 9, 4], [1, 2, 3, 4]]
    assert batch["mask"].tolist()[0] == [1, 1, 0, 0]
    assert batch["img"].shape == (3, 3)


def test_split_returns_each_entry_its_rows_in_order() -> None:
    out = {"y": np.arange(6).reshape(6, 1)}
    parts = assembly.split(out, [1, 3, 2])
    assert [p["y"].ravel().tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]


def test_an_oversized_entry_is_chunked_and_joined_back() -> None:
    x = {"x": np.arange(10).reshape(10, 1)}
    chunks = assembly.chunks(x, rows=10, size=4)
    assert [c["x"].shape[0] for c in chunks] == [4, 4, 2]
    assert assembly.concat(chunks)["x"].ravel().tolist() == list(range(10))
