from src.greet import greet


def test_greet() -> None:
    assert greet("isofeat") == "Hello, isofeat!"
