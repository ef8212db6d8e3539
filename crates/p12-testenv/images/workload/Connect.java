// `workload connect`: a TLS client that trusts only the given PKCS#12
// truststore and checks the server's name as HTTPS clients do, optionally with a
// client keystore (mTLS). Prints
//   handshake ok peer=<leaf subject> sha256=<leaf fingerprint>
// and exits 0, or prints why not and exits 1.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import java.util.Arrays;
import java.util.Locale;
import java.util.Set;
import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

final class Connect {
    static final Set<String> OPTIONS = Set.of("--host", "--port", "--truststore", "--truststore-password-file",
            "--keystore", "--password-file", "--expect-fingerprint", "--timeout-ms");

    static int run(Workload.Options o) throws Exception {
        String host = o.required("--host");
        int port = o.integer("--port", 8443);
        int timeout = o.integer("--timeout-ms", 10_000);
        Path truststore = o.path("--truststore", Workload.DEFAULT_TRUSTSTORE);
        Path trustPasswordFile = o.path("--truststore-password-file", Workload.DEFAULT_PASSWORD_FILE);
        Path keystore = o.path("--keystore", null);
        String expected = o.string("--expect-fingerprint", null);

        char[] trustPassword = Workload.readPassword(trustPasswordFile);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX");
        tmf.init(Workload.loadPkcs12(truststore, trustPassword));
        Arrays.fill(trustPassword, '\0');
        KeyManager[] keys = null;
        if (keystore != null) {
            char[] password = Workload.readPassword(o.path("--password-file", Workload.DEFAULT_PASSWORD_FILE));
            KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
            kmf.init(Workload.loadPkcs12(keystore, password), password);
            Arrays.fill(password, '\0');
            keys = kmf.getKeyManagers();
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(keys, tmf.getTrustManagers(), null);

        try (Socket raw = new Socket()) {
            raw.connect(new InetSocketAddress(host, port), timeout);
            raw.setSoTimeout(timeout);
            // Layered on a connected socket with the host name given, so that
            // SNI and the name check use the name, not the resolved address.
            try (SSLSocket tls = (SSLSocket) ctx.getSocketFactory().createSocket(raw, host, port, true)) {
                SSLParameters params = tls.getSSLParameters();
                params.setEndpointIdentificationAlgorithm("HTTPS");
                tls.setSSLParameters(params);
                tls.startHandshake();
                X509Certificate leaf = (X509Certificate) tls.getSession().getPeerCertificates()[0];
                // Under TLS 1.3 the server judges a client certificate after the
                // client's side of the handshake is done: only the server's line
                // proves it accepted this client.
                String line = new BufferedReader(new InputStreamReader(tls.getInputStream(), StandardCharsets.US_ASCII))
                        .readLine();
                if (line == null) {
                    throw new SSLException("the server closed the connection without answering");
                }
                String fingerprint = Workload.sha256(leaf);
                if (expected != null && !normalize(expected).equals(fingerprint)) {
                    System.out.println("fingerprint mismatch: expected " + normalize(expected) + " but peer="
                            + Workload.subject(leaf) + " sha256=" + fingerprint);
                    return 1;
                }
                System.out.println("handshake ok peer=" + Workload.subject(leaf) + " sha256=" + fingerprint);
                return 0;
            }
        } catch (Exception e) {
            System.out.println("handshake failed: " + e);
            return 1;
        }
    }

    /** Accepts `AB:CD:…` (keytool, openssl) as well as plain lowercase hex. */
    private static String normalize(String fingerprint) {
        return fingerprint.replace(":", "").toLowerCase(Locale.ROOT);
    }
}
