//! PKCS#12 keystores and truststores.
