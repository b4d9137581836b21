from __future__ import annotations

from hypermachine import errors


def test_codes_are_unique_and_documented() -> None:
    classes = errors.all_error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), codes
    for cls in classes:
        assert f"{cls.__name__} ({cls.status} {cls.code})" in (errors.__doc__ or "")
        assert cls.__name__ in errors.__all__


def test_body_shape() -> None:
    err = errors.VmNotFound("no VM with id 'x'", id="x")
    assert err.body() == {
        "error": {"code": "VM_NOT_FOUND", "message": "no VM with id 'x'", "details": {"id": "x"}}
    }
    assert err.status == 404
